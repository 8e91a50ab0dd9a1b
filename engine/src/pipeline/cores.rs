//! Pinning threads to cores, through core_affinity.
//!
//! [`pin_current_thread`] is the crate's one way to pin: the engine's threads
//! (`runtime::Engine`, with `EngineConfig::pin_threads`) and [`CoreMap::spawn`] both go
//! through it, and both report a refusal (the engine counts it in
//! `EngineCounters::pins_failed`; `CoreMap::spawn` returns `StageError::PinFailed`).
//!
//! [`CoreMap`] places the stages of a pipeline split into per-phase threads (intake,
//! prepare, pre-commit, commit, completion, one per participant): the design DESIGN §3
//! keeps in reserve for when one site thread caps the engine. The engine does not run
//! such threads today (docs/ops.md, "Stages and threads"); its own threads are
//! `tc-batcher`, `tc-replica-N`, `tc-completion` and `tc-participant-N`, dealt
//! round-robin over [`cores_of_this_machine`] in that order.
//!
//! Why a map and not "one core per stage": this VM has 2 cores and such a pipeline has
//! five stages plus one per participant, so stages must share cores. The default deals
//! the stages out round-robin over the cores the machine really reports, in pipeline
//! order, so that two neighbouring stages (producer and consumer of one hop) land on
//! different cores and can run at the same time. A configured core that the machine does
//! not have is a typed error at configuration time, not a silent unpinned thread.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use core_affinity::CoreId;

/// A pipeline stage, named for configuration, thread names and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Intake,
    Prepare,
    PreCommit,
    Commit,
    Completion,
    /// The stage of one participant, by its index.
    Participant(u16),
}

impl Stage {
    /// The coordinator's stages, in pipeline order.
    pub const COORDINATOR: [Stage; 5] = [
        Stage::Intake,
        Stage::Prepare,
        Stage::PreCommit,
        Stage::Commit,
        Stage::Completion,
    ];
}

impl fmt::Display for Stage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Intake => formatter.write_str("intake"),
            Stage::Prepare => formatter.write_str("prepare"),
            Stage::PreCommit => formatter.write_str("pre-commit"),
            Stage::Commit => formatter.write_str("commit"),
            Stage::Completion => formatter.write_str("completion"),
            Stage::Participant(index) => write!(formatter, "participant-{index}"),
        }
    }
}

/// A stage name that names no stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown stage {name:?}: expected intake, prepare, pre-commit, commit, completion \
     or participant-N"
)]
pub struct StageNameError {
    pub name: String,
}

impl FromStr for Stage {
    type Err = StageNameError;

    /// Parses the names `Display` prints, so that configuration files and flags can map
    /// stages to cores by name.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let stage = match name {
            "intake" => Stage::Intake,
            "prepare" => Stage::Prepare,
            "pre-commit" => Stage::PreCommit,
            "commit" => Stage::Commit,
            "completion" => Stage::Completion,
            _ => name
                .strip_prefix("participant-")
                .and_then(|index| index.parse::<u16>().ok())
                .map(Stage::Participant)
                .ok_or_else(|| StageNameError {
                    name: name.to_owned(),
                })?,
        };
        Ok(stage)
    }
}

/// A stage that cannot be placed or run.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage {stage} is mapped to core {core}, but this machine has cores {available:?}")]
    CoreNotPresent {
        stage: Stage,
        core: usize,
        available: Vec<usize>,
    },
    #[error("the operating system did not pin stage {stage} to core {core}")]
    PinFailed { stage: Stage, core: usize },
    #[error("could not start the thread of stage {stage}")]
    Spawn {
        stage: Stage,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread of stage {stage} panicked")]
    Panicked { stage: Stage },
}

/// Stage → core. A stage that is not in the map runs unpinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMap {
    /// The cores this machine reports, in ascending order. Empty when the operating
    /// system does not report them: then nothing is pinned.
    cores_available: Vec<usize>,
    assignments: BTreeMap<Stage, usize>,
}

impl CoreMap {
    /// The default for this machine: `stages` dealt round-robin over its cores.
    pub fn for_this_machine(stages: &[Stage]) -> Self {
        Self::round_robin(&cores_of_this_machine(), stages)
    }

    /// `stages` dealt round-robin over `cores_available`; nothing is pinned when that is
    /// empty. Deterministic, for tests and for machines described in configuration.
    pub fn round_robin(cores_available: &[usize], stages: &[Stage]) -> Self {
        let mut cores: Vec<usize> = cores_available.to_vec();
        cores.sort_unstable();
        cores.dedup();
        let assignments = match cores.len() {
            0 => BTreeMap::new(),
            count => stages
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, cores[i % count]))
                .collect(),
        };
        Self {
            cores_available: cores,
            assignments,
        }
    }

    /// Pins `stage` to `core`, which must be one of the machine's cores.
    pub fn assign(&mut self, stage: Stage, core: usize) -> Result<(), StageError> {
        if self.cores_available.binary_search(&core).is_err() {
            let available = self.cores_available.clone();
            return Err(StageError::CoreNotPresent {
                stage,
                core,
                available,
            });
        }
        self.assignments.insert(stage, core);
        Ok(())
    }

    /// Lets `stage` run unpinned, wherever the scheduler puts it.
    pub fn unpin(&mut self, stage: Stage) {
        self.assignments.remove(&stage);
    }

    /// The core `stage` is pinned to, if any.
    pub fn core_of(&self, stage: Stage) -> Option<usize> {
        self.assignments.get(&stage).copied()
    }

    /// The machine's cores as this map knows them.
    pub fn cores_available(&self) -> &[usize] {
        &self.cores_available
    }

    /// Starts `run` on a new thread named `tc-<stage>`, pinned as the map says.
    ///
    /// Returns only once the thread is pinned; if pinning fails, `run` never starts and
    /// the error says which stage and core.
    pub fn spawn<R, F>(&self, stage: Stage, run: F) -> Result<StageThread<R>, StageError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let core = self.core_of(stage);
        let (pinned_sender, pinned_receiver) = mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(format!("tc-{stage}"))
            .spawn(move || {
                let pinned = core.is_none_or(pin_current_thread);
                let _ = pinned_sender.send(pinned);
                pinned.then(run)
            })
            .map_err(|source| StageError::Spawn { stage, source })?;
        let pinned = pinned_receiver.recv().unwrap_or(false);
        match (pinned, core) {
            (true, _) => Ok(StageThread { stage, handle }),
            (false, core) => {
                let _ = handle.join();
                Err(StageError::PinFailed {
                    stage,
                    core: core.unwrap_or_default(),
                })
            }
        }
    }
}

/// Pins the calling thread to `core`; false when the operating system refuses. The
/// one pinning path of the crate (see the module docs).
pub fn pin_current_thread(core: usize) -> bool {
    // core_affinity indexes a fixed `cpu_set_t` and panics past it; no such core exists.
    if core >= CPU_SET_CORES_MAX {
        return false;
    }
    core_affinity::set_for_current(CoreId { id: core })
}

/// Cores a Linux `cpu_set_t` can name (glibc's `CPU_SETSIZE`).
const CPU_SET_CORES_MAX: usize = 1024;

/// The cores core_affinity reports for this process, ascending; empty if unknown.
pub fn cores_of_this_machine() -> Vec<usize> {
    let mut cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    cores.sort_unstable();
    cores
}

/// A running stage thread.
#[derive(Debug)]
pub struct StageThread<R> {
    stage: Stage,
    /// `None` only if pinning failed, and then `spawn` returned an error instead.
    handle: JoinHandle<Option<R>>,
}

impl<R> StageThread<R> {
    /// Waits for the stage to finish and returns what it returned.
    pub fn join(self) -> Result<R, StageError> {
        let stage = self.stage;
        match self.handle.join() {
            Ok(Some(result)) => Ok(result),
            Ok(None) | Err(_) => Err(StageError::Panicked { stage }),
        }
    }

    /// The stage's thread, for unparking it.
    pub fn thread(&self) -> &thread::Thread {
        self.handle.thread()
    }

    /// Which stage this is.
    pub fn stage(&self) -> Stage {
        self.stage
    }
}
