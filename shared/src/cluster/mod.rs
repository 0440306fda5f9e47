//! The Kubernetes side: connections to each served cluster (EKS tokens or kubeconfig), the
//! action record kept on every changed object, and the other controllers that would fight
//! over an object.

pub mod connect;
pub(crate) mod controllers;
pub mod eks;
pub mod record;
