//! The cycle every generated-mesh suite puts its meshes through: create them on the API
//! server, read them back and compile them, run the function on each usable mesh's alert,
//! read back and compile again, send a revert for every object it changed, read back and
//! compile once more, delete the meshes. What a suite checks of each mesh's [`Trial`] is
//! its own.

use futures::stream::{self, StreamExt};
use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::Remediation;
use mesh_remediation::report::Outcome;
use serde_json::{Value, json};

use super::suite::{Clock, fnv};
use super::{
    Findings, Generated, Harness, Reverted, applied_or_refused_cleanly, changed_objects,
    check_reverts, compile_all, compiled_after, delivered, key,
};
use crate::cluster::pipeline_with;
use crate::events;
use crate::istio_oracle::Compiled;
use crate::mesh_gen::Violation;

/// Meshes set up, invoked and reverted at once.
pub const CONCURRENCY: usize = 8;

/// A function under test, as the cycle drives it on meshes of type `M`.
pub trait Function<M: Generated> {
    /// Its name: the function identity it acts with, and its samples
    /// `<name>-firing.json` and `<name>-revert.json`.
    const NAME: &'static str;
    /// Whether a mesh whose stored objects did not change at all (`resourceVersion`
    /// included) keeps its earlier compilation instead of being compiled again: the oracle
    /// is a pure function of its input, and its runs are the suite's slowest part.
    const REUSES_UNCHANGED_COMPILES: bool = false;
    /// The remediation it runs.
    type Remediation: Remediation;

    /// The remediation, with its settings for `mesh`.
    fn remediation(&self, mesh: &M) -> Self::Remediation;
    /// The labels of the mesh's alert (beside its sample's).
    fn alert_labels(&self, mesh: &M) -> Value;
    /// Why `mesh`, as Istio compiled it before the function, tests nothing, if it does not
    /// (an `invalid-mesh` violation; the function is not run on it).
    fn unusable(&self, _mesh: &M, _before: &Compiled) -> Option<String> {
        None
    }
}

/// Everything known about one mesh's run, for the suite's checks.
pub struct Trial<'a, M> {
    /// The mesh.
    pub mesh: &'a M,
    /// The function's outcome on its alert.
    pub outcome: &'a Outcome,
    /// What Istio compiled before the function acted.
    pub before: &'a Compiled,
    /// The same after, or why Istio rejects the stored objects.
    pub after: Result<&'a Compiled, &'a String>,
    /// The objects as the API server stored them after the function acted.
    pub after_objects: &'a [Value],
    /// The objects (as they were before) the function changed.
    pub changed: &'a [Value],
    /// Its reverts and what they gave back.
    pub undo: Reverted<'a>,
}

impl<M> Trial<'_, M> {
    /// What every suite checks of a run, and what `check` finds on the configuration Istio
    /// compiled after the function acted (told whether it applied), under `context`:
    /// Istio must accept the stored objects, a refusal must change nothing, and the reverts
    /// must give back what was there.
    pub fn violations(
        &self,
        context: &str,
        check: impl FnOnce(&Compiled, bool, &mut Findings),
    ) -> Vec<Violation> {
        let mut f = Findings::default();
        let Some(after) = compiled_after(self.after, &mut f) else {
            return f.into_violations(context);
        };
        let applied =
            applied_or_refused_cleanly(self.outcome, self.before, after, self.changed, &mut f);
        check(after, applied, &mut f);
        check_reverts(&self.undo, &mut f);
        f.into_violations(context)
    }
}

/// What one cycle learnt of each mesh, by the meshes' order.
pub struct Cycle {
    /// The `invalid-mesh` violation of a mesh that could not be set up or compiled, or
    /// tests nothing.
    invalid: Vec<Option<Violation>>,
    /// The function's outcome on each usable mesh.
    pub outcomes: Vec<Option<Outcome>>,
    before_objects: Vec<Vec<Value>>,
    /// What Istio compiled before the function acted.
    pub before: Vec<Result<Compiled, String>>,
    after_objects: Vec<Vec<Value>>,
    after: Vec<Result<Compiled, String>>,
    /// The objects each function run changed.
    pub changed: Vec<Vec<Value>>,
    reverts: Vec<Vec<(String, Outcome)>>,
    reverted_objects: Vec<Vec<Value>>,
    reverted: Vec<Result<Compiled, String>>,
}

impl Cycle {
    /// Puts `meshes` through the cycle with `function`, `CONCURRENCY` at a time on the API
    /// server, each compile phase one batch of oracle runs for all of them; the phases'
    /// times are printed when `verbose`.
    pub async fn run<M: Generated, F: Function<M>>(
        h: &Harness,
        meshes: &[M],
        function: &F,
        verbose: bool,
    ) -> Cycle {
        let mut clock = Clock::new(verbose);
        let acting = &Acting { h, function };
        let deployed: Vec<Result<(), String>> = stream::iter(meshes)
            .map(|m| h.deploy(m))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        clock.lap("created on the API server");
        let before_objects = h.stored(meshes).await;
        let before = compile_all(meshes, &before_objects).await;
        clock.lap("read back and compiled (before)");
        let invalid: Vec<Option<Violation>> = meshes
            .iter()
            .enumerate()
            .map(|(i, mesh)| {
                let why = match (&deployed[i], &before[i]) {
                    (Err(why), _) | (_, Err(why)) => Some(why.clone()),
                    (Ok(()), Ok(compiled)) => function.unusable(mesh, compiled),
                };
                why.map(|why| Violation::new("invalid-mesh", why))
            })
            .collect();
        let outcomes: Vec<Option<Outcome>> = stream::iter(meshes.iter().zip(&invalid))
            .map(|(mesh, invalid)| async move {
                match invalid {
                    None => Some(acting.invoke(mesh).await),
                    Some(_) => None,
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        clock.lap(&format!("{} invoked", F::NAME));
        let after_objects = h.stored(meshes).await;
        let after = compile::<M, F>(meshes, &after_objects, &before_objects, &before).await;
        clock.lap("read back and compiled (after)");
        let changed: Vec<Vec<Value>> = before_objects
            .iter()
            .zip(&after_objects)
            .map(|(b, a)| changed_objects(b, a))
            .collect();
        let reverts: Vec<Vec<(String, Outcome)>> = stream::iter(meshes.iter().zip(&changed))
            .map(|(mesh, objects)| async move {
                let mut out = Vec::new();
                for object in objects {
                    out.push((key(object), acting.revert(mesh, object).await));
                }
                out
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        clock.lap("reverted");
        let reverted_objects = h.stored(meshes).await;
        let reverted = compile::<M, F>(meshes, &reverted_objects, &before_objects, &before).await;
        clock.lap("read back and compiled (reverted)");
        h.remove(meshes).await;
        Cycle {
            invalid,
            outcomes,
            before_objects,
            before,
            after_objects,
            after,
            changed,
            reverts,
            reverted_objects,
            reverted,
        }
    }

    /// The run of `mesh`, the `i`th of the cycle's meshes, if the function ran on it.
    pub fn trial<'a, M>(&'a self, i: usize, mesh: &'a M) -> Option<Trial<'a, M>> {
        let (Some(outcome), Ok(before)) = (&self.outcomes[i], &self.before[i]) else {
            return None;
        };
        Some(Trial {
            mesh,
            outcome,
            before,
            after: self.after[i].as_ref(),
            after_objects: &self.after_objects[i],
            changed: &self.changed[i],
            undo: Reverted {
                before,
                reverted: self.reverted[i].as_ref(),
                before_objects: &self.before_objects[i],
                reverted_objects: &self.reverted_objects[i],
                reverts: &self.reverts[i],
            },
        })
    }

    /// Each mesh's violations: its `invalid-mesh` one, or what `check` finds in its run.
    pub fn violations<M>(
        &self,
        meshes: &[M],
        check: impl Fn(&Trial<'_, M>) -> Vec<Violation>,
    ) -> Vec<Vec<Violation>> {
        meshes
            .iter()
            .enumerate()
            .map(|(i, mesh)| {
                let invalid = self.invalid[i].iter().cloned();
                invalid
                    .chain(self.trial(i, mesh).iter().flat_map(&check))
                    .collect()
            })
            .collect()
    }
}

/// Compiles every mesh with its `stored` objects; with
/// [`Function::REUSES_UNCHANGED_COMPILES`], only those whose objects are not exactly the
/// `earlier` ones, the others keeping the earlier compilation.
async fn compile<M: Generated, F: Function<M>>(
    meshes: &[M],
    stored: &[Vec<Value>],
    earlier_objects: &[Vec<Value>],
    earlier: &[Result<Compiled, String>],
) -> Vec<Result<Compiled, String>> {
    if !F::REUSES_UNCHANGED_COMPILES {
        return compile_all(meshes, stored).await;
    }
    let todo: Vec<usize> = (0..meshes.len())
        .filter(|i| stored[*i] != earlier_objects[*i])
        .collect();
    let picked: Vec<M> = todo.iter().map(|i| meshes[*i].clone()).collect();
    let objects: Vec<Vec<Value>> = todo.iter().map(|i| stored[*i].clone()).collect();
    let mut fresh = compile_all(&picked, &objects).await.into_iter();
    (0..meshes.len())
        .map(|i| {
            if todo.contains(&i) {
                fresh.next().expect("one compilation per mesh")
            } else {
                earlier[i].clone()
            }
        })
        .collect()
}

/// The function acting on meshes of the harness, as Lambda would run it.
struct Acting<'a, F> {
    h: &'a Harness,
    function: &'a F,
}

impl<F> Acting<'_, F> {
    /// Runs the function on the mesh's alert: its sample with the mesh's labels, and a
    /// fingerprint of its own (the mesh's prefix hashed).
    async fn invoke<M: Generated>(&self, mesh: &M) -> Outcome
    where
        F: Function<M>,
    {
        let mut event = events::fresh(&format!("{}-firing.json", F::NAME), &mesh.alert_namespace());
        let mut message = events::message(&event);
        let labels = self.function.alert_labels(mesh);
        for (k, v) in labels.as_object().into_iter().flatten() {
            message["commonLabels"][k] = v.clone();
            for alert in message["alerts"].as_array_mut().expect("alerts") {
                alert["labels"][k] = v.clone();
            }
        }
        message["alerts"][0]["fingerprint"] = json!(format!("{:016x}", fnv(mesh.prefix())));
        events::set_message(&mut event, &message);
        self.handle(mesh, &event, &format!("alert-{}", mesh.prefix()))
            .await
    }

    /// Sends the revert request for one changed object, as a person would.
    async fn revert<M: Generated>(&self, mesh: &M, object: &Value) -> Outcome
    where
        F: Function<M>,
    {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let mut event = events::fresh(&format!("{}-revert.json", F::NAME), namespace);
        event["revert"]["namespace"] = json!(namespace);
        event["revert"]["kind"] = object["kind"].clone();
        event["revert"]["name"] = object["metadata"]["name"].clone();
        let id = format!("revert-{}-{}", mesh.prefix(), key(object));
        self.handle(mesh, &event, &id).await
    }

    /// Runs `event` through the pipeline with the function's own identity, its budgets in
    /// the mesh's alert namespace and the mesh's root namespace; its one outcome.
    async fn handle<M: Generated>(&self, mesh: &M, event: &Value, id: &str) -> Outcome
    where
        F: Function<M>,
    {
        let (budget, root) = (mesh.alert_namespace(), mesh.root_namespace());
        let vars = [
            ("BUDGET_NAMESPACE", budget.as_str()),
            ("ISTIO_ROOT_NAMESPACE", root.as_str()),
        ];
        let pipeline = pipeline_with(
            self.h.home.function_client(F::NAME),
            self.function.remediation(mesh),
            &vars,
        );
        let invocation = Invocation::new(id, None, None);
        delivered(|| pipeline.handle(event, &invocation)).await
    }
}
