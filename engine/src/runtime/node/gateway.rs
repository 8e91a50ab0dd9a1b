//! The gateway of a cluster's opening replica: network clients' transactions in,
//! outcomes out.
//!
//! Each transaction a client sends goes through the same submission path as
//! [`Engine::submit`](crate::Engine::submit) (`submit_to`: validation, deduplication by
//! id, admission, intake), and its [`Ticket`] is kept here. Tickets are futures; the
//! gateway polls each one with a waker that queues the ticket's slot and rings the
//! gateway's doorbell, so that finishing a batch costs one wake-up per ticket, not a
//! scan of every ticket held. Outcomes are answered in frames of up to
//! `reply_items_max` items per client, in the order they became known.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::pipeline::{Busy, BusyReason, Doorbell, Outcome, Ticket};
use crate::proto::TxnId;

use crate::runtime::Txn;

/// Queues the slots whose tickets completed, and wakes the gateway.
struct Ready {
    slots: Mutex<Vec<u32>>,
    doorbell: Arc<Doorbell>,
}

/// The waker of one held ticket.
struct SlotWaker {
    slot: u32,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.slot);
        self.ready.doorbell.ring();
    }
}

/// A ticket the gateway holds for a client.
struct Held<C> {
    client: C,
    txn: TxnId,
    ticket: Ticket,
}

/// What the gateway answers one client.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Outcomes now known, in the order they became known.
    Outcomes(Vec<(TxnId, Outcome)>),
    /// Transactions refused at admission: never submitted, safe to resend.
    Busy(Vec<TxnId>, BusyReason),
}

/// The gateway's state: the tickets it holds for clients.
pub struct Gateway<C> {
    /// Held tickets by slot; `free` lists the empty slots. At most `held_max` slots.
    held: Vec<Option<Held<C>>>,
    /// The waker of each slot, made once with the slot and reused by every ticket it
    /// holds (a waker per ticket was an allocation per transaction).
    wakers: Vec<Waker>,
    free: Vec<u32>,
    held_max: usize,
    ready: Arc<Ready>,
    reply_items_max: usize,
    /// Outcomes known but not yet handed to `answer`, per client.
    known: HashMap<C, Vec<(TxnId, Outcome)>>,
    drained: Vec<u32>,
}

/// Why a client's transaction was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum GatewayFull {
    /// The gateway holds `held_max` tickets already (admission bounds this below).
    Held,
}

impl<C: Copy + Eq + Hash> Gateway<C> {
    /// A gateway that holds at most `held_max` tickets and rings `doorbell` when one
    /// completes.
    pub fn new(held_max: usize, reply_items_max: usize, doorbell: Arc<Doorbell>) -> Gateway<C> {
        Gateway {
            held: Vec::new(),
            wakers: Vec::new(),
            free: Vec::new(),
            held_max,
            ready: Arc::new(Ready {
                slots: Mutex::new(Vec::new()),
                doorbell,
            }),
            reply_items_max: reply_items_max.max(1),
            known: HashMap::new(),
            drained: Vec::new(),
        }
    }

    /// Tickets held for clients.
    pub fn held(&self) -> usize {
        self.held.len() - self.free.len()
    }

    /// Takes `client`'s transactions through `submit`. Those the engine sheds are
    /// answered `Busy` at once (through `answer`); the others are answered once their
    /// outcome is known.
    pub fn take(
        &mut self,
        client: C,
        txns: Vec<Txn>,
        mut submit: impl FnMut(Txn) -> Result<Ticket, Busy<Txn>>,
        mut answer: impl FnMut(C, Answer),
    ) {
        let mut busy: Vec<TxnId> = Vec::new();
        let mut reason = BusyReason::HighWater;
        for txn in txns {
            if self.held() >= self.held_max {
                busy.push(txn.id);
                continue;
            }
            match submit(txn) {
                Ok(ticket) => self.hold(client, txn.id, ticket),
                Err(refused) => {
                    reason = refused.reason();
                    busy.push(refused.into_inner().id);
                }
            }
        }
        if !busy.is_empty() {
            for chunk in busy.chunks(self.reply_items_max) {
                answer(client, Answer::Busy(chunk.to_vec(), reason));
            }
        }
    }

    fn hold(&mut self, client: C, txn: TxnId, mut ticket: Ticket) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.held.len() as u32;
                self.held.push(None);
                self.wakers.push(Waker::from(Arc::new(SlotWaker {
                    slot,
                    ready: self.ready.clone(),
                })));
                slot
            }
        };
        let waker = &self.wakers[slot as usize];
        match Pin::new(&mut ticket).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(outcome) => {
                self.free.push(slot);
                self.known.entry(client).or_default().push((txn, outcome));
            }
            Poll::Pending => {
                self.held[slot as usize] = Some(Held {
                    client,
                    txn,
                    ticket,
                })
            }
        }
    }

    /// Whether completed tickets wait to be answered.
    pub fn has_ready(&self) -> bool {
        !self
            .ready
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
            || !self.known.is_empty()
    }

    /// Answers every outcome that became known, batched per client.
    pub fn answer_ready(&mut self, mut answer: impl FnMut(C, Answer)) {
        self.drained.clear();
        std::mem::swap(
            &mut self.drained,
            &mut self
                .ready
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for index in 0..self.drained.len() {
            let slot = self.drained[index];
            let Some(entry) = self.held.get_mut(slot as usize) else {
                continue;
            };
            let Some(held) = entry else { continue };
            let mut context = Context::from_waker(&self.wakers[slot as usize]);
            if let Poll::Ready(outcome) = Pin::new(&mut held.ticket).poll(&mut context) {
                self.known
                    .entry(held.client)
                    .or_default()
                    .push((held.txn, outcome));
                *entry = None;
                self.free.push(slot);
            }
        }
        for (client, items) in self.known.drain() {
            for chunk in items.chunks(self.reply_items_max) {
                answer(client, Answer::Outcomes(chunk.to_vec()));
            }
        }
    }

    /// Forgets every ticket held for `client` (its connection closed): the engine
    /// still decides them; nobody listens.
    pub fn forget(&mut self, client: C) {
        for (slot, entry) in self.held.iter_mut().enumerate() {
            if entry.as_ref().is_some_and(|held| held.client == client) {
                *entry = None;
                self.free.push(slot as u32);
            }
        }
        self.known.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Admission, AdmissionLimits, Priority};

    fn txn(id: u64) -> Txn {
        Txn::new(TxnId(id), Priority::Normal)
    }

    #[test]
    fn outcomes_reach_their_clients_once_their_tickets_complete() {
        // Proves that a completed ticket wakes the gateway and is answered to the client
        // that sent it, in one frame per client, and only once.
        let doorbell = Arc::new(Doorbell::default());
        let admission = Admission::new(AdmissionLimits::new(8, 16).unwrap()).unwrap();
        let mut gateway: Gateway<u8> = Gateway::new(16, 100, doorbell);
        let mut completions = Vec::new();
        let mut answers = Vec::new();
        for (client, id) in [(1u8, 10u64), (2, 20), (1, 11)] {
            gateway.take(
                client,
                vec![txn(id)],
                |txn| {
                    let admitted = admission.admit(txn, Priority::Normal)?;
                    completions.push(admitted.completion);
                    Ok(admitted.ticket)
                },
                |client, answer| answers.push((client, answer)),
            );
        }
        assert!(answers.is_empty());
        assert!(!gateway.has_ready());
        for completion in &completions {
            admission.complete(*completion, Outcome::Committed).unwrap();
        }
        assert!(gateway.has_ready());
        gateway.answer_ready(|client, answer| answers.push((client, answer)));
        answers.sort_by_key(|(client, _)| *client);
        let committed = |ids: &[u64]| {
            Answer::Outcomes(
                ids.iter()
                    .map(|&id| (TxnId(id), Outcome::Committed))
                    .collect(),
            )
        };
        assert_eq!(
            answers,
            vec![(1, committed(&[10, 11])), (2, committed(&[20]))]
        );
        assert_eq!(gateway.held(), 0);
        answers.clear();
        gateway.answer_ready(|client, answer| answers.push((client, answer)));
        assert!(answers.is_empty());
    }

    #[test]
    fn shed_transactions_are_answered_busy_at_once() {
        // Proves that a transaction admission refuses is answered Busy, not held.
        let doorbell = Arc::new(Doorbell::default());
        let admission = Admission::new(AdmissionLimits::new(1, 2).unwrap()).unwrap();
        let mut gateway: Gateway<u8> = Gateway::new(16, 100, doorbell);
        let mut answers = Vec::new();
        gateway.take(
            7,
            vec![txn(1), txn(2), txn(3)],
            |txn| Ok(admission.admit(txn, Priority::Normal)?.ticket),
            |client, answer| answers.push((client, answer)),
        );
        assert_eq!(gateway.held(), 1);
        assert_eq!(answers.len(), 1);
        let (client, Answer::Busy(ids, _)) = &answers[0] else {
            panic!("expected Busy, got {answers:?}");
        };
        assert_eq!((*client, ids.as_slice()), (7, &[TxnId(2), TxnId(3)][..]));
    }
}
