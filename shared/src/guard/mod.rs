//! Guard: whether an alert may lead to a change at all. The pure decision and its skip
//! vocabulary, and the brakes that hold across invocations: budgets, pauses, escalation,
//! and which served cluster an alert is for.

pub mod budget;
pub mod clusters;
pub mod decide;
pub mod escalation;
pub mod pause;
pub mod skip;
