//! The TCP front end: one thread per connection reads frames and decides, a second
//! writes the responses in request order while it waits for their outcomes, so that a
//! client may keep up to [`IN_FLIGHT_PER_CONNECTION_MAX`] requests in flight.
//!
//! Framing: a 2-byte big-endian length, then the message. A length of 0 or above
//! [`FRAME_BYTES_MAX`] cannot be skipped safely (the stream has lost its framing), so
//! it closes the connection; every other defect is answered with field 39 = `30`.

use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tricommit_engine::proto::TxnId;
use tricommit_engine::{Outcome, Ticket};

use super::backend::Backend;
use super::book::{payment_id, Book, PaymentStep, ReversalStep, Status};
use super::codec::{self, Message};
use super::rules::{self, code, Payment, Reversal, Tariff};

/// The most client connections served at once; more are accepted and closed at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// The most requests of one connection read but not yet answered.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 256;
/// The largest message accepted (the length prefix's value).
pub const FRAME_BYTES_MAX: usize = 8192;
/// Bytes of the length prefix.
pub const FRAME_PREFIX_BYTES: usize = 2;
/// How often a blocked read or accept looks at the stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a response write may block on a client that does not read before the
/// switch gives up writing to it (it still records every outcome).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the switch waits for an outcome before it answers 91.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(10);
/// The most threads at once that wait for outcomes later than [`OUTCOME_WAIT`].
pub const LATE_WATCHERS_MAX: usize = 64;
/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 16 * 1024;

const _: () = assert!(FRAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(READ_CHUNK_BYTES >= FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);

/// Counters printed at shutdown.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    pub approved: AtomicU64,
    pub declined: AtomicU64,
    pub reversals: AtomicU64,
    pub format_errors: AtomicU64,
    pub closed_bad_frame: AtomicU64,
}

/// Everything the connections share.
pub struct Switch {
    pub backend: Backend,
    pub book: Arc<Book>,
    /// Threads waiting for outcomes that came later than [`OUTCOME_WAIT`].
    pub late_watchers: Arc<AtomicUsize>,
    pub tariff: Tariff,
    pub stats: Stats,
    pub stop: Arc<AtomicBool>,
}

/// A request read and decided, waiting in its connection's queue for its response.
enum Job {
    /// The response is known already.
    Ready(Message),
    /// A submitted payment: wait for its outcome.
    Payment {
        request: Message,
        id: TxnId,
        ticket: Ticket,
    },
    /// A retransmission of a payment in flight: wait for the first one's outcome.
    Retransmission { request: Message, payment: Payment },
    /// A reversal that must wait or post.
    Reversal {
        request: Message,
        reversal: Reversal,
        step: ReversalStep,
    },
}

/// Accepts connections until the stop flag is set, then waits for every connection
/// to answer what it has read.
pub fn serve(listener: TcpListener, switch: Arc<Switch>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !switch.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if active.load(Ordering::SeqCst) >= CONNECTIONS_MAX {
                    switch
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                switch.stats.connections.fetch_add(1, Ordering::Relaxed);
                let (switch, active) = (switch.clone(), active.clone());
                let spawned = thread::Builder::new()
                    .name("connection".into())
                    .spawn(move || {
                        if let Err(error) = connection(stream, &switch) {
                            eprintln!("tricommit-switch: connection: {error}");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(error) => {
                        eprintln!("tricommit-switch: cannot start a connection thread: {error}")
                    }
                }
                connections.retain(|handle| !handle.is_finished());
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(STOP_POLL / 5),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                eprintln!("tricommit-switch: accept: {error}");
                thread::sleep(STOP_POLL);
            }
        }
    }
    for handle in connections {
        let _ = handle.join();
    }
    Ok(())
}

/// Serves one connection: this thread reads, a second one answers.
fn connection(stream: TcpStream, switch: &Arc<Switch>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STOP_POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (jobs, queue) = mpsc::sync_channel(IN_FLIGHT_PER_CONNECTION_MAX);
    let writer = stream.try_clone()?;
    let answering = {
        let switch = switch.clone();
        thread::Builder::new()
            .name("responder".into())
            .spawn(move || respond(queue, writer, &switch))?
    };
    let read = read_requests(&stream, switch, &jobs);
    drop(jobs);
    let _ = answering.join();
    read
}

/// Reads frames until the peer closes, the stream breaks its framing, or the switch stops.
fn read_requests(
    mut stream: &TcpStream,
    switch: &Switch,
    jobs: &SyncSender<Job>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut filled = 0usize;
    // A connection is in service from the start; an 0800 sign-off takes it out.
    let mut in_service = true;
    while !switch.stop.load(Ordering::SeqCst) {
        // At most one incomplete frame is kept, and the buffer holds more than a whole
        // one, so there is always room: a read of 0 bytes is the peer closing.
        debug_assert!(filled < buffer.len());
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(()),
            Ok(read) => filled += read,
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(error) => return Err(error),
        }
        let mut start = 0;
        while filled - start >= FRAME_PREFIX_BYTES {
            let len = usize::from(u16::from_be_bytes([buffer[start], buffer[start + 1]]));
            if len == 0 || len > FRAME_BYTES_MAX {
                switch
                    .stats
                    .closed_bad_frame
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("frame length {len} is outside 1..={FRAME_BYTES_MAX}: closing"),
                ));
            }
            let end = start + FRAME_PREFIX_BYTES + len;
            if end > filled {
                break;
            }
            let job = request(
                &buffer[start + FRAME_PREFIX_BYTES..end],
                switch,
                &mut in_service,
            );
            start = end;
            match job {
                Some(job) => {
                    if jobs.send(job).is_err() {
                        return Ok(());
                    }
                }
                None => {
                    switch
                        .stats
                        .closed_bad_frame
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "a message without a valid MTI, or a response: closing",
                    ));
                }
            }
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
    Ok(())
}

/// Decides one request; `None` when it cannot be answered (close the connection).
/// `in_service` is the connection's sign-on state, which 0800 messages change.
fn request(frame: &[u8], switch: &Switch, in_service: &mut bool) -> Option<Job> {
    switch.stats.requests.fetch_add(1, Ordering::Relaxed);
    let (message, error) = codec::decode_partial(frame).ok()?;
    let response_mti = rules::response_mti(message.mti)?;
    if error.is_some() {
        return Some(format_error(&message, response_mti, switch));
    }
    let job = match &message.mti {
        b"0200" | b"0420" if !*in_service => {
            let echo = echo_fields(&message.mti);
            Job::Ready(rules::response(
                &message,
                response_mti,
                echo,
                code::UNAVAILABLE,
            ))
        }
        b"0200" => payment_request(message, switch),
        b"0420" => reversal_request(message, switch),
        b"0800" => network_request(&message, in_service),
        _ => format_error(&message, response_mti, switch),
    };
    Some(job)
}

/// The fields echoed in the response to a request of this MTI.
fn echo_fields(mti: &[u8; 4]) -> &'static [u8] {
    match mti {
        b"0200" => rules::ECHO_0210,
        b"0420" => rules::ECHO_0430,
        b"0800" => rules::ECHO_0810,
        _ => &[7, 11, 41],
    }
}

fn format_error(message: &Message, response_mti: [u8; 4], switch: &Switch) -> Job {
    switch.stats.format_errors.fetch_add(1, Ordering::Relaxed);
    Job::Ready(rules::response(
        message,
        response_mti,
        echo_fields(&message.mti),
        code::FORMAT_ERROR,
    ))
}

fn payment_request(request: Message, switch: &Switch) -> Job {
    let payment = match rules::payment(&request, &switch.tariff) {
        Ok(payment) => payment,
        Err(refused) => {
            if refused == code::FORMAT_ERROR {
                switch.stats.format_errors.fetch_add(1, Ordering::Relaxed);
            }
            return Job::Ready(payment_response(&request, refused, None));
        }
    };
    match switch.book.payment(&payment) {
        PaymentStep::Submit(id) => match submit_payment(switch, id, &payment) {
            Some(ticket) => Job::Payment {
                request,
                id,
                ticket,
            },
            None => Job::Ready(payment_response(&request, code::UNAVAILABLE, None)),
        },
        PaymentStep::Answer(answer, id) => Job::Ready(payment_response(&request, answer, Some(id))),
        PaymentStep::Wait => Job::Retransmission { request, payment },
    }
}

/// Submits a payment the book admitted; when the engine stays busy, the book forgets
/// it (nothing was submitted, so a retransmission may try again).
fn submit_payment(switch: &Switch, id: TxnId, payment: &Payment) -> Option<Ticket> {
    let ticket = switch
        .backend
        .submit(switch.tariff.payment_txn(id, payment));
    if ticket.is_none() {
        switch
            .book
            .decide(id, Status::Declined(code::UNAVAILABLE), true);
    }
    ticket
}

/// A 0210: the echoed fields, field 39 and, for an approval, field 38.
fn payment_response(request: &Message, answer: &[u8; 2], id: Option<TxnId>) -> Message {
    let mut response = rules::response(request, *b"0210", rules::ECHO_0210, answer);
    if let (Some(id), true) = (id, answer == code::APPROVED) {
        response.set(38, rules::approval_code(id));
    }
    response
}

fn reversal_request(request: Message, switch: &Switch) -> Job {
    switch.stats.reversals.fetch_add(1, Ordering::Relaxed);
    let reversal = match rules::reversal(&request) {
        Ok(reversal) => reversal,
        Err(refused) => {
            switch.stats.format_errors.fetch_add(1, Ordering::Relaxed);
            return Job::Ready(rules::response(
                &request,
                *b"0430",
                rules::ECHO_0430,
                refused,
            ));
        }
    };
    match switch.book.reversal(&reversal.original) {
        ReversalStep::Answer(answer) => Job::Ready(rules::response(
            &request,
            *b"0430",
            rules::ECHO_0430,
            answer,
        )),
        step => Job::Reversal {
            request,
            reversal,
            step,
        },
    }
}

/// An 0800: 001 signs the connection on, 002 signs it off, 301 is an echo test.
fn network_request(request: &Message, in_service: &mut bool) -> Job {
    let answer = match request.get(70) {
        Some(rules::NETWORK_SIGN_ON) => {
            *in_service = true;
            code::APPROVED
        }
        Some(rules::NETWORK_SIGN_OFF) => {
            *in_service = false;
            code::APPROVED
        }
        Some(rules::NETWORK_ECHO) => code::APPROVED,
        _ => code::FORMAT_ERROR,
    };
    Job::Ready(rules::response(request, *b"0810", rules::ECHO_0810, answer))
}

/// Answers the jobs in order; flushes whenever the queue runs dry or the next answer
/// must wait for an outcome. After a write error it still waits for every outcome, so
/// that the book records them.
fn respond(queue: Receiver<Job>, stream: TcpStream, switch: &Switch) {
    let mut out = BufWriter::new(&stream);
    let mut frame = Vec::with_capacity(FRAME_BYTES_MAX);
    let mut writable = true;
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) => {
                writable = writable && out.flush().is_ok();
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let mut job = job;
        if !ready(&mut job) {
            // Send what is answered before blocking on an outcome, so that no response
            // waits for a later batch.
            writable = writable && out.flush().is_ok();
        }
        let response = answer(job, switch);
        if !writable {
            continue;
        }
        frame.clear();
        frame.extend_from_slice(&[0, 0]);
        if let Err(error) = codec::encode(&response, &mut frame) {
            eprintln!(
                "tricommit-switch: cannot encode a {} response: {error}",
                response.mti_str()
            );
            continue;
        }
        let len = (frame.len() - FRAME_PREFIX_BYTES) as u16;
        frame[..FRAME_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        writable = out.write_all(&frame).is_ok();
    }
    let _ = out.flush();
    drop(out);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Whether a job's response can be built without blocking.
fn ready(job: &mut Job) -> bool {
    match job {
        Job::Ready(_) => true,
        Job::Payment { ticket, .. } => ticket.try_outcome().is_some(),
        Job::Retransmission { .. } | Job::Reversal { .. } => false,
    }
}

/// The response to one job, waiting for outcomes as needed.
fn answer(job: Job, switch: &Switch) -> Message {
    let response = match job {
        Job::Ready(response) => response,
        Job::Payment {
            request,
            id,
            ticket,
        } => {
            let answer = payment_outcome(switch, id, ticket);
            payment_response(&request, answer, Some(id))
        }
        Job::Retransmission { request, payment } => {
            let (answer, id) = retransmission(switch, &payment);
            payment_response(&request, answer, Some(id))
        }
        Job::Reversal {
            request,
            reversal,
            step,
        } => {
            let answer = reverse(switch, &reversal, step);
            rules::response(&request, *b"0430", rules::ECHO_0430, answer)
        }
    };
    if response.mti == *b"0210" {
        let counter = match response.get(39) == Some(code::APPROVED) {
            true => &switch.stats.approved,
            false => &switch.stats.declined,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// Waits for a submitted payment and records its outcome.
fn payment_outcome(switch: &Switch, id: TxnId, ticket: Ticket) -> &'static [u8; 2] {
    let outcome = match ticket.wait_timeout(OUTCOME_WAIT) {
        Ok(outcome) => outcome,
        Err(ticket) => {
            watch_late(switch, id, ticket);
            Outcome::InDoubt
        }
    };
    let answer = rules::outcome_code(outcome);
    switch.book.decide(id, status_of(outcome), false);
    answer
}

/// The book's status for an outcome.
fn status_of(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Committed => Status::Approved,
        Outcome::InDoubt => Status::Unknown,
        Outcome::Aborted(_) => Status::Declined(rules::outcome_code(outcome)),
    }
}

/// Keeps waiting, on its own thread, for an outcome the client was told is unknown
/// (`91`), so that the book learns it and a later reversal or retransmission gets the
/// truth. At most [`LATE_WATCHERS_MAX`] such threads exist at once; beyond that the
/// payment stays unknown. Each ends when the engine completes the ticket, which it does for
/// every ticket by shutdown at the latest.
fn watch_late(switch: &Switch, id: TxnId, ticket: Ticket) {
    if switch.late_watchers.fetch_add(1, Ordering::SeqCst) >= LATE_WATCHERS_MAX {
        switch.late_watchers.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let (book, watchers) = (switch.book.clone(), switch.late_watchers.clone());
    let spawned = thread::Builder::new()
        .name("late-outcome".into())
        .spawn(move || {
            let outcome = ticket.wait();
            book.decide(id, status_of(outcome), false);
            watchers.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        switch.late_watchers.fetch_sub(1, Ordering::SeqCst);
        eprintln!("tricommit-switch: cannot start a thread to wait for a late outcome");
    }
}

/// Answers a retransmission once the first transmission's outcome is known.
fn retransmission(switch: &Switch, payment: &Payment) -> (&'static [u8; 2], TxnId) {
    let deadline = Instant::now() + OUTCOME_WAIT;
    loop {
        match switch.book.payment(payment) {
            PaymentStep::Answer(answer, id) => return (answer, id),
            PaymentStep::Submit(id) => {
                // The first transmission was never submitted (the engine was busy).
                return match submit_payment(switch, id, payment) {
                    Some(ticket) => (payment_outcome(switch, id, ticket), id),
                    None => (code::UNAVAILABLE, id),
                };
            }
            PaymentStep::Wait => {
                if !switch.book.wait(deadline) {
                    return (code::UNAVAILABLE, payment_id(&payment.key));
                }
            }
        }
    }
}

/// Carries a reversal through: wait for the original, post the compensation once.
fn reverse(switch: &Switch, reversal: &Reversal, first: ReversalStep) -> &'static [u8; 2] {
    let deadline = Instant::now() + OUTCOME_WAIT;
    let mut step = first;
    loop {
        match step {
            ReversalStep::Answer(answer) => return answer,
            ReversalStep::Compensate(id, payment) => {
                let txn = switch.tariff.reversal_txn(id, &payment);
                let outcome = match switch.backend.submit(txn) {
                    Some(ticket) => ticket
                        .wait_timeout(OUTCOME_WAIT)
                        .unwrap_or(Outcome::InDoubt),
                    None => Outcome::InDoubt,
                };
                let committed = outcome == Outcome::Committed;
                switch.book.reversal_done(&reversal.original, committed);
                return match rules::outcome_code(outcome) {
                    // The compensation credits back what the payment debited; a
                    // refusal for funds would be a bug, reported as a malfunction.
                    answer if answer == code::INSUFFICIENT_FUNDS => code::MALFUNCTION,
                    answer => answer,
                };
            }
            ReversalStep::Wait => {
                if !switch.book.wait(deadline) {
                    return code::UNAVAILABLE;
                }
            }
        }
        step = switch.book.reversal(&reversal.original);
    }
}
