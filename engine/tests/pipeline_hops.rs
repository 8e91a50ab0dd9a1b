//! Tests of the SPSC and MPSC hops and of the spin-then-park wait behind them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tricommit_engine::pipeline::bounds::HOP_CAPACITY_MAX;
use tricommit_engine::pipeline::wait::WaitConfigError;
use tricommit_engine::pipeline::{mpsc, spsc, Doorbell, HopError, PushError, Received, WaitConfig};

/// Items each stress test moves across threads.
const STRESS_ITEMS_TOTAL: u64 = 2_000_000;
/// A small capacity, so that the producer often finds the hop full and the consumer
/// often finds it empty and parks.
const STRESS_CAPACITY: usize = 256;
/// Items a consumer takes per batch pop.
const POP_ITEMS_MAX: usize = 64;
/// Round trips in the no-lost-wakeup tests.
const WAKEUP_ROUNDS: u64 = 20_000;
/// A liveness bound, not a timing assertion: a lost wakeup with parking forever hangs,
/// and this turns the hang into a failure. Correct runs take well under a second.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Runs `body` on its own thread and fails the test if it never finishes.
fn finishes<F: FnOnce() + Send + 'static>(what: &str, body: F) {
    let (done_sender, done_receiver) = std_mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = done_sender.send(());
    });
    match done_receiver.recv_timeout(HANG_LIMIT) {
        Ok(()) => worker.join().expect("worker panicked"),
        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            worker.join().expect("worker panicked");
        }
        Err(std_mpsc::RecvTimeoutError::Timeout) => panic!("{what} never finished: a lost wakeup"),
    }
}

/// A doorbell that parks with no timeout, so that only the wakeup protocol wakes it.
fn strict_doorbell(spin_rounds: u32) -> Arc<Doorbell> {
    let config = WaitConfig::new(spin_rounds, 1)
        .expect("valid config")
        .without_park_timeout();
    Arc::new(Doorbell::new(config))
}

#[test]
fn spsc_stress_delivers_every_item_in_order() {
    // Two million items through a small SPSC hop with a parking consumer arrive complete
    // and in order.
    finishes("spsc stress", || {
        let (mut sender, mut receiver) =
            spsc::channel::<u64>(STRESS_CAPACITY, strict_doorbell(4)).expect("capacity");
        let producer = thread::spawn(move || {
            for mut item in 0..STRESS_ITEMS_TOTAL {
                while let Err(PushError::Full(back)) = sender.push(item) {
                    item = back;
                    thread::yield_now();
                }
            }
        });
        let mut batch = Vec::with_capacity(POP_ITEMS_MAX);
        let mut expected = 0u64;
        loop {
            match receiver.wait_batch(&mut batch, POP_ITEMS_MAX, None) {
                Received::Items(_) => {
                    for item in batch.drain(..) {
                        assert_eq!(item, expected, "spsc reordered or lost an item");
                        expected += 1;
                    }
                }
                Received::Closed => break,
                Received::TimedOut => panic!("no deadline was given, yet the wait timed out"),
            }
        }
        producer.join().expect("producer panicked");
        assert_eq!(expected, STRESS_ITEMS_TOTAL);
    });
}

#[test]
fn spsc_push_from_moves_whole_runs_in_order() {
    // Batched pushes (`push_from`) keep the order and lose nothing, even when the hop
    // takes only part of a run.
    finishes("spsc push_from", || {
        let (mut sender, mut receiver) =
            spsc::channel::<u64>(STRESS_CAPACITY, strict_doorbell(4)).expect("capacity");
        let producer = thread::spawn(move || {
            let mut run = Vec::with_capacity(1000);
            let mut next = 0u64;
            while next < STRESS_ITEMS_TOTAL || !run.is_empty() {
                while run.len() < 1000 && next < STRESS_ITEMS_TOTAL {
                    run.push(next);
                    next += 1;
                }
                if sender.push_from(&mut run).expect("consumer alive") == 0 {
                    thread::yield_now();
                }
            }
        });
        let mut batch = Vec::new();
        let mut expected = 0u64;
        while let Received::Items(_) = receiver.wait_batch(&mut batch, POP_ITEMS_MAX, None) {
            for item in batch.drain(..) {
                assert_eq!(item, expected);
                expected += 1;
            }
        }
        producer.join().expect("producer panicked");
        assert_eq!(expected, STRESS_ITEMS_TOTAL);
    });
}

#[test]
fn mpsc_stress_delivers_every_item_once_in_per_producer_order() {
    // Four producers push half a million items each through a small MPSC hop; the
    // consumer gets each exactly once, in each producer's order.
    const PRODUCERS: u64 = 4;
    finishes("mpsc stress", || {
        let (sender, mut receiver) =
            mpsc::channel::<(u64, u64)>(STRESS_CAPACITY, strict_doorbell(4)).expect("capacity");
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let sender = sender.clone();
                thread::spawn(move || {
                    for sequence in 0..STRESS_ITEMS_TOTAL / PRODUCERS {
                        let mut item = (producer, sequence);
                        while let Err(PushError::Full(back)) = sender.push(item) {
                            item = back;
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(sender);
        let mut next = [0u64; PRODUCERS as usize];
        let mut batch = Vec::new();
        while let Received::Items(_) = receiver.wait_batch(&mut batch, POP_ITEMS_MAX, None) {
            for (producer, sequence) in batch.drain(..) {
                let slot = &mut next[producer as usize];
                assert_eq!(sequence, *slot, "producer {producer}'s items out of order");
                *slot += 1;
            }
        }
        for producer in producers {
            producer.join().expect("producer panicked");
        }
        assert!(next
            .iter()
            .all(|count| *count == STRESS_ITEMS_TOTAL / PRODUCERS));
    });
}

/// Ping-pong with a producer that pushes rarely: before each push it waits a varying
/// while, so that its push lands at every point of the consumer's way to sleep.
fn ping_pong_rarely(spin_rounds: u32, wait_for_park: bool) {
    let (mut ping_sender, mut ping_receiver) =
        spsc::channel::<u64>(1, strict_doorbell(spin_rounds)).expect("capacity");
    let (mut pong_sender, mut pong_receiver) =
        spsc::channel::<u64>(1, strict_doorbell(spin_rounds)).expect("capacity");
    let doorbell = ping_receiver.doorbell().clone();
    let echo = thread::spawn(move || {
        let mut batch = Vec::new();
        while let Received::Items(_) = ping_receiver.wait_batch(&mut batch, 1, None) {
            for item in batch.drain(..) {
                pong_sender.push(item).expect("the pong hop holds one item");
            }
        }
    });
    let mut batch = Vec::new();
    for round in 0..WAKEUP_ROUNDS {
        if wait_for_park {
            while !doorbell.is_parked() {
                thread::yield_now();
            }
        } else {
            for _ in 0..round % 97 {
                std::hint::spin_loop();
            }
        }
        ping_sender
            .push(round)
            .expect("the ping hop holds one item");
        assert_eq!(
            pong_receiver.wait_batch(&mut batch, 1, None),
            Received::Items(1)
        );
        assert_eq!(batch.pop(), Some(round));
    }
    drop(ping_sender);
    echo.join().expect("echo panicked");
    if wait_for_park {
        assert!(
            doorbell.unparks_total() >= WAKEUP_ROUNDS,
            "the consumer was not parked"
        );
    }
}

#[test]
fn no_lost_wakeup_when_the_consumer_is_already_parked() {
    // A producer that pushes only once the consumer is parked always wakes it, with no
    // park timeout to hide a lost wakeup.
    finishes("parked consumer", || ping_pong_rarely(0, true));
}

#[test]
fn no_lost_wakeup_when_a_push_races_the_consumer_going_to_sleep() {
    // Pushes that land anywhere in the consumer's spin, check and park sequence are
    // never lost, with and without spinning first.
    finishes("racing push, no spin", || ping_pong_rarely(0, false));
    finishes("racing push, spin", || ping_pong_rarely(3, false));
}

#[test]
fn no_lost_wakeup_for_the_mpsc_hop() {
    // The MPSC hop wakes a parked consumer for a rare push too.
    finishes("mpsc rare push", || {
        let (sender, mut receiver) = mpsc::channel::<u64>(4, strict_doorbell(0)).expect("capacity");
        let doorbell = receiver.doorbell().clone();
        let received = Arc::new(AtomicU64::new(0));
        let consumer = {
            let received = received.clone();
            thread::spawn(move || {
                let mut batch = Vec::new();
                while let Received::Items(count) = receiver.wait_batch(&mut batch, 4, None) {
                    received.fetch_add(count as u64, Ordering::Release);
                    batch.clear();
                }
                received.load(Ordering::Acquire)
            })
        };
        for round in 0..1000 {
            // The consumer took the previous item and went back to sleep.
            while received.load(Ordering::Acquire) < round || !doorbell.is_parked() {
                thread::yield_now();
            }
            sender.push(round).expect("room");
        }
        while !doorbell.is_parked() {
            thread::yield_now();
        }
        drop(sender);
        assert_eq!(consumer.join().expect("consumer panicked"), 1000);
    });
}

#[test]
fn closing_the_sender_wakes_a_parked_consumer() {
    // Dropping the last sender wakes a parked consumer, which then reports `Closed`
    // after the items that were still waiting.
    finishes("spsc close", || {
        let (mut sender, mut receiver) =
            spsc::channel::<u8>(4, strict_doorbell(0)).expect("capacity");
        let doorbell = receiver.doorbell().clone();
        let consumer = thread::spawn(move || {
            let mut batch = Vec::new();
            let first = receiver.wait_batch(&mut batch, 4, None);
            let second = receiver.wait_batch(&mut batch, 4, None);
            (first, second, batch)
        });
        sender.push(7).expect("room");
        while !doorbell.is_parked() {
            thread::yield_now();
        }
        drop(sender);
        let (first, second, batch) = consumer.join().expect("consumer panicked");
        assert_eq!(
            (first, second, batch),
            (Received::Items(1), Received::Closed, vec![7])
        );
    });
    finishes("mpsc close", || {
        let (sender, mut receiver) = mpsc::channel::<u8>(4, strict_doorbell(0)).expect("capacity");
        let second_sender = sender.clone();
        let doorbell = receiver.doorbell().clone();
        let consumer = thread::spawn(move || receiver.wait_batch(&mut Vec::new(), 4, None));
        while !doorbell.is_parked() {
            thread::yield_now();
        }
        drop(sender);
        drop(second_sender);
        assert_eq!(
            consumer.join().expect("consumer panicked"),
            Received::Closed
        );
    });
}

#[test]
fn a_full_hop_hands_the_value_back() {
    // A push onto a full hop fails with `Full` and returns the very value, for both
    // kinds; a pop makes room again.
    let (mut sender, mut receiver) = spsc::channel::<String>(2, Arc::default()).expect("capacity");
    sender.push("a".into()).expect("room");
    sender.push("b".into()).expect("room");
    let error = sender.push("c".into()).expect_err("full");
    assert!(error.is_full());
    assert_eq!(error.into_inner(), "c");
    assert_eq!(receiver.pop().as_deref(), Some("a"));
    sender.push("c".into()).expect("room again");

    let (sender, mut receiver) = mpsc::channel::<String>(1, Arc::default()).expect("capacity");
    sender.push("x".into()).expect("room");
    assert_eq!(sender.push("y".into()), Err(PushError::Full("y".into())));
    assert_eq!(receiver.pop().as_deref(), Some("x"));
}

#[test]
fn a_push_to_a_gone_consumer_hands_the_value_back() {
    // Once the receiver is dropped, a push fails with `Closed` and returns the value.
    let (mut sender, receiver) = spsc::channel::<u32>(2, Arc::default()).expect("capacity");
    drop(receiver);
    assert_eq!(sender.push(5), Err(PushError::Closed(5)));
    assert!(sender.is_closed());

    let (sender, receiver) = mpsc::channel::<u32>(2, Arc::default()).expect("capacity");
    drop(receiver);
    assert_eq!(sender.push(6), Err(PushError::Closed(6)));
}

#[test]
fn pop_batch_takes_at_most_the_limit_and_keeps_the_buffer() {
    // A batch pop appends at most `items_max` items, in order, into the caller's buffer,
    // which keeps its allocation between pops.
    let (mut sender, mut receiver) = spsc::channel::<u32>(16, Arc::default()).expect("capacity");
    let (mpsc_sender, mut mpsc_receiver) =
        mpsc::channel::<u32>(16, Arc::default()).expect("capacity");
    for item in 0..10 {
        sender.push(item).expect("room");
        mpsc_sender.push(item).expect("room");
    }
    let mut batch = Vec::with_capacity(16);
    let buffer = batch.as_ptr();
    assert_eq!(receiver.pop_batch(&mut batch, 4), 4);
    assert_eq!(batch, [0, 1, 2, 3]);
    batch.clear();
    assert_eq!(receiver.pop_batch(&mut batch, 100), 6);
    assert_eq!(batch, [4, 5, 6, 7, 8, 9]);
    assert_eq!(batch.as_ptr(), buffer, "the buffer was reallocated");
    batch.clear();
    assert_eq!(mpsc_receiver.pop_batch(&mut batch, 3), 3);
    assert_eq!(batch, [0, 1, 2]);
    assert_eq!(mpsc_receiver.pop_batch(&mut batch, 100), 7);
    assert_eq!(receiver.pop_batch(&mut batch, 100), 0);
}

#[test]
fn a_deadline_ends_the_wait_on_an_empty_hop() {
    // A wait with a deadline on an empty hop returns `TimedOut`, not an item or a hang.
    let (_sender, mut receiver) = spsc::channel::<u8>(1, Arc::default()).expect("capacity");
    let deadline = Instant::now() + Duration::from_millis(2);
    assert_eq!(
        receiver.wait_batch(&mut Vec::new(), 1, Some(deadline)),
        Received::TimedOut
    );
    let (_sender, mut receiver) = mpsc::channel::<u8>(1, Arc::default()).expect("capacity");
    assert_eq!(
        receiver.wait_batch(&mut Vec::new(), 1, Some(Instant::now())),
        Received::TimedOut
    );
}

#[test]
fn the_producer_sees_whether_the_consumer_is_idle() {
    // `consumer_idle` is true while the consumer waits and false while it works.
    let doorbell = strict_doorbell(0);
    let (mut sender, mut receiver) = spsc::channel::<u8>(4, doorbell.clone()).expect("capacity");
    assert!(
        !sender.consumer_idle(),
        "a consumer that has not waited yet counts as busy"
    );
    let working = Arc::new(Barrier::new(2));
    let release = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (working, release) = (working.clone(), release.clone());
        thread::spawn(move || {
            let got = receiver.wait_batch(&mut Vec::new(), 4, None);
            working.wait();
            while !release.load(Ordering::Acquire) {
                thread::yield_now();
            }
            got
        })
    };
    while !doorbell.is_parked() {
        thread::yield_now();
    }
    assert!(sender.consumer_idle());
    sender.push(1).expect("room");
    working.wait();
    assert!(
        !sender.consumer_idle(),
        "the consumer is working on its item"
    );
    release.store(true, Ordering::Release);
    assert_eq!(
        consumer.join().expect("consumer panicked"),
        Received::Items(1)
    );
}

#[test]
fn one_doorbell_wakes_a_stage_that_reads_two_hops() {
    // A stage that sleeps on one doorbell shared by two hops wakes for a push on either.
    finishes("two hops", || {
        let doorbell = strict_doorbell(0);
        let (_first_sender, first) = spsc::channel::<u8>(1, doorbell.clone()).expect("capacity");
        let (second_sender, second) = mpsc::channel::<u8>(1, doorbell.clone()).expect("capacity");
        let stage = {
            let doorbell = doorbell.clone();
            thread::spawn(move || {
                let woke = doorbell.wait_until(|| first.has_items() || second.has_items(), None);
                (woke, first.has_items(), second.has_items())
            })
        };
        while !doorbell.is_parked() {
            thread::yield_now();
        }
        second_sender.push(9).expect("room");
        assert_eq!(stage.join().expect("stage panicked"), (true, false, true));
    });
}

#[test]
fn capacities_and_wait_configs_out_of_bounds_are_typed_errors() {
    // A zero or oversized capacity, too many spin rounds, and a zero or oversized park
    // timeout are refused with errors that name the value.
    assert_eq!(
        spsc::channel::<u8>(0, Arc::default()).err(),
        Some(HopError::Capacity { capacity: 0 })
    );
    let oversized = HOP_CAPACITY_MAX + 1;
    assert_eq!(
        mpsc::channel::<u8>(oversized, Arc::default()).err(),
        Some(HopError::Capacity {
            capacity: oversized
        })
    );
    assert_eq!(
        WaitConfig::new(1000, 10),
        Err(WaitConfigError::SpinRounds { spin_rounds: 1000 })
    );
    assert_eq!(
        WaitConfig::new(1, 0),
        Err(WaitConfigError::ParkTimeout { park_timeout_us: 0 })
    );
    assert!(WaitConfig::new(1, u64::MAX).is_err());
    assert!(WaitConfig::new(1, 10).is_ok());
}
