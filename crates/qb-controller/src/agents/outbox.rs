//! What waits to go to one agent: a bounded queue that holds no memory while it is empty.
//!
//! tokio's `mpsc` allocates a block of 32 slots for every channel up front; with a queue per
//! connected agent that was about 1.5 KiB of every idle agent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use qb_agent_proto::ControllerMessage;
use tokio::sync::Notify;

/// A queue of at most `capacity` messages.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            messages: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        capacity,
        ready: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the receiver: a message came, or the last sender went.
    ready: Notify,
}

struct State {
    messages: VecDeque<ControllerMessage>,
    senders: usize,
    receiver: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Puts messages in the queue; the receiver sees the end when every sender is dropped.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `message`, or gives it back when the queue is full or its receiver gone.
    pub fn try_send(&self, message: ControllerMessage) -> Result<(), ControllerMessage> {
        {
            let mut state = self.0.lock();
            if !state.receiver || state.messages.len() >= self.0.capacity {
                return Err(message);
            }
            state.messages.push_back(message);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.ready.notify_one();
        }
    }
}

/// Takes messages out of the queue.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next message; `None` once the queue is empty and every sender gone.
    pub async fn recv(&mut self) -> Option<ControllerMessage> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(message) = state.messages.pop_front() {
                    if state.messages.is_empty() {
                        state.messages = VecDeque::new();
                    }
                    return Some(message);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits: nothing sent in between is missed.
            self.0.ready.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver = false;
        state.messages.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(generation: u64) -> ControllerMessage {
        ControllerMessage::PlanAvailable { generation }
    }

    #[tokio::test]
    async fn messages_come_in_order_up_to_the_capacity_then_the_end() {
        let (tx, mut rx) = channel(2);
        assert!(tx.try_send(message(1)).is_ok());
        let other = tx.clone();
        assert!(other.try_send(message(2)).is_ok());
        assert_eq!(tx.try_send(message(3)), Err(message(3)), "full");
        assert_eq!(rx.recv().await, Some(message(1)));
        assert!(tx.try_send(message(3)).is_ok(), "room again");
        assert_eq!(rx.recv().await, Some(message(2)));
        drop(tx);
        assert_eq!(rx.recv().await, Some(message(3)), "queued before the end");
        drop(other);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_end() {
        let (tx, mut rx) = channel(4);
        let receiving = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(message(7)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let received = tokio::time::timeout(Duration::from_secs(5), receiving)
            .await
            .expect("the receiver woke")
            .unwrap();
        assert_eq!(received, (Some(message(7)), None));
    }

    #[tokio::test]
    async fn nothing_is_queued_once_the_receiver_is_gone() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert_eq!(tx.try_send(message(1)), Err(message(1)));
    }
}
