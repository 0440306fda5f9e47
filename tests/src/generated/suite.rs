//! What the generated-mesh suites share around their runs: the control plane and the seeds
//! from the environment, the phases' clock, and what happens when meshes break an
//! invariant: the first mesh of each class is shrunk, all are reported, the test fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Generated, ShrinkLimits, fresh_prefix, shrink};
use crate::mesh_gen::Violation;

/// Meshes that live on the API server together (one Service IP each; the test control
/// plane's range holds 254).
pub const GROUP: usize = 100;

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// The admin kubeconfig of the control plane the meshes live on (`TEST_KUBECONFIG`, which
/// `scripts/test` sets).
pub fn kubeconfig() -> PathBuf {
    std::env::var_os("TEST_KUBECONFIG")
        .map(PathBuf::from)
        .expect("generated meshes need a real API server: run scripts/test, or set TEST_KUBECONFIG")
}

/// The seeds of a run: `GENERATED_SEED .. GENERATED_SEED + GENERATED_MESHES`.
#[derive(Debug, Clone, Copy)]
pub struct Seeds {
    /// The first seed.
    pub base: u64,
    /// How many meshes.
    pub count: u64,
}

impl Seeds {
    /// The seeds from the environment (else the suite's defaults), printed so a failure can
    /// be run again.
    pub fn from_env(function: &str, default_seed: u64, default_meshes: u64) -> Seeds {
        let seeds = Seeds {
            base: env_u64("GENERATED_SEED", default_seed),
            count: env_u64("GENERATED_MESHES", default_meshes),
        };
        println!(
            "{function} on generated meshes: GENERATED_SEED={} GENERATED_MESHES={}",
            seeds.base, seeds.count
        );
        seeds
    }

    /// One mesh per seed, each under a prefix no other mesh of the control plane has.
    pub fn meshes<M: Generated>(&self, generate: impl Fn(u64) -> M) -> Vec<M> {
        (self.base..self.base + self.count)
            .map(|seed| generate(seed).with_prefix(&fresh_prefix(seed)))
            .collect()
    }
}

/// Runs `meshes` through `run` [`GROUP`] at a time (the suite's first, full run), and prints
/// how long setting them up, compiling, `done` (what the function did to them, in words),
/// reverting and checking took; each mesh's violations.
pub async fn run_in_groups<M: Generated>(
    meshes: &[M],
    done: &str,
    mut run: impl AsyncFnMut(Vec<M>) -> Vec<Vec<Violation>>,
) -> Vec<Vec<Violation>> {
    let started = Instant::now();
    let mut found = Vec::new();
    for group in meshes.chunks(GROUP) {
        found.extend(run(group.to_vec()).await);
    }
    println!(
        "{} meshes set up, compiled, {done}, reverted and checked in {:.1?}",
        meshes.len(),
        started.elapsed()
    );
    found
}

/// The suite's shrinking limits as the environment adjusts them: `GENERATED_SHRINK=0` skips
/// shrinking (long runs), `GENERATED_SHRINK_SECONDS` bounds its time per class.
pub fn shrink_limits(defaults: ShrinkLimits) -> ShrinkLimits {
    ShrinkLimits {
        max_candidates: if env_u64("GENERATED_SHRINK", 1) == 0 {
            0
        } else {
            defaults.max_candidates
        },
        max_time: Duration::from_secs(env_u64(
            "GENERATED_SHRINK_SECONDS",
            defaults.max_time.as_secs(),
        )),
        ..defaults
    }
}

/// Returns when no mesh broke an invariant. Otherwise shrinks the first mesh of each class
/// of violation through `run` (which answers each mesh's violations), prints the classes,
/// writes the report to `GENERATED_REPORT` if set, and fails the test with it: every seed,
/// the first violation and the minimal mesh as YAML (its names as `mesh`).
pub async fn fail_on_violations<M: Generated>(
    function: &str,
    seeds: Seeds,
    meshes: Vec<M>,
    found: Vec<Vec<Violation>>,
    limits: ShrinkLimits,
    run: impl AsyncFn(Vec<M>) -> Vec<Vec<Violation>>,
) {
    let mut by_class: BTreeMap<String, Vec<(M, Violation)>> = BTreeMap::new();
    for (mesh, violations) in meshes.into_iter().zip(found) {
        for violation in violations {
            by_class
                .entry(violation.class.clone())
                .or_default()
                .push((mesh.clone(), violation));
        }
    }
    if by_class.is_empty() {
        return;
    }
    let mut report = format!(
        "# {function} on generated meshes: {} classes of violation\n\n\
         GENERATED_SEED={} GENERATED_MESHES={}\n",
        by_class.len(),
        seeds.base,
        seeds.count
    );
    for (class, failures) in &by_class {
        let (mesh, violation) = &failures[0];
        println!(
            "[{class}] {} meshes, first seed {}: {}",
            failures.len(),
            mesh.seed(),
            violation.detail
        );
    }
    for (class, failures) in &by_class {
        let seeds: Vec<String> = failures.iter().map(|(m, _)| m.seed().to_string()).collect();
        let (mesh, violation) = &failures[0];
        let started = Instant::now();
        let shrunk = shrink(mesh, violation, limits, &run).await;
        println!(
            "[{class}] seed {}: shrunk from size {} to {} in {} steps, {} candidates, {:.1?}",
            mesh.seed(),
            mesh.weight(),
            shrunk.mesh.weight(),
            shrunk.steps,
            shrunk.tried,
            started.elapsed()
        );
        report.push_str(&format!(
            "\n## {class}\n\nseeds ({}): {}\n\nfirst: seed {}: {}\n\n\
             minimal (shrunk in {} steps, {} candidates tried): {}\n\n```yaml\n{}```\n",
            seeds.len(),
            seeds.join(", "),
            mesh.seed(),
            violation.detail.replace(mesh.prefix(), "mesh"),
            shrunk.steps,
            shrunk.tried,
            shrunk
                .violation
                .detail
                .replace(shrunk.mesh.prefix(), "mesh"),
            shrunk.mesh.with_prefix("mesh").to_yaml()
        ));
    }
    if let Some(path) = std::env::var_os("GENERATED_REPORT") {
        std::fs::write(&path, &report).expect("write GENERATED_REPORT");
    }
    panic!("{report}");
}

/// Prints how long each phase took (for the first, full run).
pub struct Clock {
    verbose: bool,
    last: Instant,
}

impl Clock {
    /// A clock that prints when `verbose`.
    pub fn new(verbose: bool) -> Clock {
        Clock {
            verbose,
            last: Instant::now(),
        }
    }

    /// The phase `what` ended now.
    pub fn lap(&mut self, what: &str) {
        if self.verbose {
            println!("  {what}: {:.1?}", self.last.elapsed());
        }
        self.last = Instant::now();
    }
}

/// FNV-1a of `text`: a mesh's alert fingerprint from its prefix, stable across runs.
pub fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
