//! An idle pipeline, for measuring what waiting costs: nine stages (the coordinator's
//! five and four participants), pinned as the default core map says, each parked on an
//! empty hop. Measure its CPU use with
//!
//! ```sh
//! cargo build --release -p tricommit-engine --example idle_stage
//! /usr/bin/time -v target/release/examples/idle_stage 10
//! ```
//!
//! The argument is how many seconds to stay idle (10 by default). The issue's target is
//! under 2% CPU.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tricommit_engine::pipeline::bounds::STAGE_QUEUE_BATCHES_CAPACITY;
use tricommit_engine::pipeline::{mpsc, CoreMap, Doorbell, Received, Stage};

/// The participants the example runs, like the load generator's default.
const PARTICIPANTS: u16 = 4;
/// How long to stay idle when no argument is given.
const IDLE_SECONDS_DEFAULT: u64 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let idle_seconds = match std::env::args().nth(1) {
        Some(argument) => argument.parse::<u64>()?,
        None => IDLE_SECONDS_DEFAULT,
    };
    let mut stages = Stage::COORDINATOR.to_vec();
    stages.extend((0..PARTICIPANTS).map(Stage::Participant));
    let cores = CoreMap::for_this_machine(&stages);
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for stage in stages {
        let (sender, mut receiver) =
            mpsc::channel::<u64>(STAGE_QUEUE_BATCHES_CAPACITY, Arc::new(Doorbell::default()))?;
        senders.push(sender);
        threads.push(cores.spawn(stage, move || {
            let mut batch = Vec::new();
            while let Received::Items(_) | Received::TimedOut =
                receiver.wait_batch(&mut batch, STAGE_QUEUE_BATCHES_CAPACITY, None)
            {
                batch.clear();
            }
            receiver.doorbell().parks_total()
        })?);
    }
    thread::sleep(Duration::from_secs(idle_seconds));
    drop(senders);
    for stage_thread in threads {
        let stage = stage_thread.stage();
        let core = cores.core_of(stage);
        let parks_total = stage_thread.join()?;
        println!("stage {stage:<14} core {core:?}: woke {parks_total} times in {idle_seconds} s");
    }
    Ok(())
}
