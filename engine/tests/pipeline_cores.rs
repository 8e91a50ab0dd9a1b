//! Tests of the stage-to-core map.

use tricommit_engine::pipeline::cores::{cores_of_this_machine, StageNameError};
use tricommit_engine::pipeline::{CoreMap, Stage, StageError};

fn all_stages(participants: u16) -> Vec<Stage> {
    let mut stages = Stage::COORDINATOR.to_vec();
    stages.extend((0..participants).map(Stage::Participant));
    stages
}

#[test]
fn the_default_deals_stages_over_the_cores_the_machine_has() {
    // On a 2-core machine nine stages share the two cores, alternating in pipeline
    // order, so that neighbouring stages run on different cores.
    let map = CoreMap::round_robin(&[1, 0], &all_stages(4));
    let cores: Vec<_> = all_stages(4)
        .iter()
        .map(|stage| map.core_of(*stage))
        .collect();
    let expected: Vec<_> = (0..9).map(|index| Some(index % 2)).collect();
    assert_eq!(cores, expected);
}

#[test]
fn the_default_for_this_machine_uses_only_its_cores() {
    // Every stage the default pins goes to a core this machine reports, and when it
    // reports cores every stage is pinned.
    let available = cores_of_this_machine();
    let map = CoreMap::for_this_machine(&all_stages(4));
    for stage in all_stages(4) {
        match map.core_of(stage) {
            Some(core) => assert!(available.contains(&core), "{stage} on missing core {core}"),
            None => assert!(available.is_empty(), "{stage} left unpinned"),
        }
    }
}

#[test]
fn a_core_the_machine_lacks_is_a_typed_error() {
    // Mapping a stage to a core that does not exist fails with an error naming the
    // stage, the core and the cores there are, and leaves the map unchanged.
    let mut map = CoreMap::round_robin(&[0, 1], &Stage::COORDINATOR);
    let error = map
        .assign(Stage::Commit, 7)
        .expect_err("core 7 does not exist");
    let names_all = matches!(
        &error,
        StageError::CoreNotPresent { stage: Stage::Commit, core: 7, available }
            if *available == [0, 1]
    );
    assert!(
        names_all,
        "the error does not name the stage, core and cores: {error:?}"
    );
    assert_eq!(
        error.to_string(),
        "stage commit is mapped to core 7, but this machine has cores [0, 1]"
    );
    assert_eq!(map.core_of(Stage::Commit), Some(1));
    map.assign(Stage::Commit, 0).expect("core 0 exists");
    assert_eq!(map.core_of(Stage::Commit), Some(0));
}

#[test]
fn a_spawned_stage_runs_named_and_pinned_as_mapped() {
    // `spawn` runs the stage on a thread named after it, pinned to a core this machine
    // has, and `join` returns what it returned.
    let map = CoreMap::for_this_machine(&all_stages(1));
    let stage = map
        .spawn(Stage::Participant(0), thread_name_and_cpu)
        .expect("stage starts");
    let (name, cpu) = stage.join().expect("stage finishes");
    assert_eq!(name.as_deref(), Some("tc-participant-0"));
    if let Some(core) = map.core_of(Stage::Participant(0)) {
        assert_eq!(cpu, Some(core), "the stage ran off its core");
    }
}

#[test]
fn an_unpinned_stage_runs_anywhere_and_a_panic_is_reported() {
    // A stage without a core runs unpinned, and a stage that panics is reported by
    // name at `join`, not propagated as a panic.
    let mut map = CoreMap::round_robin(&[], &Stage::COORDINATOR);
    assert_eq!(map.core_of(Stage::Intake), None);
    assert_eq!(
        map.spawn(Stage::Intake, || 5)
            .expect("starts")
            .join()
            .expect("finishes"),
        5
    );
    map.unpin(Stage::Prepare);
    let stage = map.spawn(Stage::Prepare, || -> u8 {
        panic!("stage failure on purpose")
    });
    let error = stage
        .expect("starts")
        .join()
        .expect_err("the stage panicked");
    assert!(matches!(
        error,
        StageError::Panicked {
            stage: Stage::Prepare
        }
    ));
}

#[test]
fn stage_names_parse_back_and_unknown_names_are_typed_errors() {
    // Every stage's printed name parses back to it, so configuration can name stages;
    // a name that is no stage is an error that quotes it.
    for stage in all_stages(3) {
        assert_eq!(stage.to_string().parse::<Stage>(), Ok(stage));
    }
    for name in [
        "",
        "batcher",
        "participant-",
        "participant-x",
        "participant-70000",
    ] {
        let error = StageNameError {
            name: name.to_owned(),
        };
        assert_eq!(name.parse::<Stage>(), Err(error));
    }
}

/// The current thread's name and the CPU it runs on (Linux only; `None` elsewhere).
fn thread_name_and_cpu() -> (Option<String>, Option<usize>) {
    let name = std::thread::current().name().map(str::to_owned);
    (name, current_cpu())
}

#[cfg(target_os = "linux")]
fn current_cpu() -> Option<usize> {
    // Field 39 of /proc/thread-self/stat is the CPU the thread last ran on.
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(36)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn current_cpu() -> Option<usize> {
    None
}
