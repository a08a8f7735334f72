//! Puts the chunks of one encoded message back together. A probe hit sends a message as
//! consecutive chunks from one thread, in order; chunks of other threads may come between them.
//! A message is handed on only when every byte of it arrived: a message cut by the kernel's cap,
//! or missing a chunk (lost, unreadable), is reported as such and never decoded from part of
//! its bytes. Pure: records in, messages out.

use std::collections::HashMap;

use observer_common::{EventHeader, MESSAGE_CHUNK_BYTES, MessageChunk, kind};

use crate::events::{DecodeError, read_record};

/// What a chunk completed.
#[derive(Debug)]
pub enum Assembled {
    /// Every byte of a message: the header of its first chunk, and the bytes.
    Whole { header: EventHeader, bytes: Vec<u8> },
    /// A message longer than the cap: only its first chunk was sent, to name its run.
    Truncated {
        header: EventHeader,
        message_len: u64,
        prefix: Vec<u8>,
    },
    /// A message some of whose chunks did not arrive or could not be read.
    Incomplete { header: EventHeader },
}

#[derive(Debug)]
struct Partial {
    header: EventHeader,
    message_id: u64,
    message_len: u64,
    bytes: Vec<u8>,
}

/// What a thread's last chunk left.
#[derive(Debug)]
enum Thread {
    /// A message waiting for its next chunk.
    Building(Partial),
    /// A message already reported incomplete: its remaining chunks are dropped.
    Discarding { message_id: u64 },
}

/// Messages being put together, by thread.
#[derive(Debug, Default)]
pub struct Reassembly {
    threads: HashMap<(u32, u32), Thread>,
}

impl Reassembly {
    /// One `MessageChunk` record; what it completes goes to `out` (a chunk that starts a new
    /// message on a thread whose last message still lacks chunks first completes that one as
    /// `Incomplete`).
    pub fn push(&mut self, record: &[u8], out: &mut Vec<Assembled>) -> Result<(), DecodeError> {
        let chunk = read_chunk(record)?;
        let thread = (chunk.header.pid, chunk.header.tid);
        match self.threads.remove(&thread) {
            Some(Thread::Building(partial)) if partial.message_id == chunk.message_id => {
                if chunk.len > 0 && partial.bytes.len() as u64 == u64::from(chunk.offset) {
                    return self.extend(thread, partial, &chunk, record, out);
                }
                // A chunk before this one was lost, or this one was unreadable.
                out.push(Assembled::Incomplete {
                    header: partial.header,
                });
                self.discard(thread, chunk.message_id);
                return Ok(());
            }
            Some(Thread::Building(partial)) => out.push(Assembled::Incomplete {
                header: partial.header,
            }),
            Some(Thread::Discarding { message_id }) if message_id == chunk.message_id => {
                self.discard(thread, message_id);
                return Ok(());
            }
            _ => {}
        }
        if chunk.truncated != 0 {
            out.push(Assembled::Truncated {
                header: chunk.header,
                message_len: chunk.message_len,
                prefix: chunk_bytes(&chunk, record).to_vec(),
            });
            return Ok(());
        }
        if chunk.offset != 0 || chunk.len == 0 {
            // The message's first chunks were lost, or its first chunk was unreadable.
            out.push(Assembled::Incomplete {
                header: chunk.header,
            });
            self.discard(thread, chunk.message_id);
            return Ok(());
        }
        let partial = Partial {
            header: chunk.header,
            message_id: chunk.message_id,
            message_len: chunk.message_len,
            bytes: Vec::with_capacity(usize::try_from(chunk.message_len).unwrap_or(0).min(1 << 20)),
        };
        self.extend(thread, partial, &chunk, record, out)
    }

    fn discard(&mut self, thread: (u32, u32), message_id: u64) {
        self.threads
            .insert(thread, Thread::Discarding { message_id });
    }

    fn extend(
        &mut self,
        thread: (u32, u32),
        mut partial: Partial,
        chunk: &MessageChunk,
        record: &[u8],
        out: &mut Vec<Assembled>,
    ) -> Result<(), DecodeError> {
        partial.bytes.extend_from_slice(chunk_bytes(chunk, record));
        let have = partial.bytes.len() as u64;
        if have >= partial.message_len {
            if have == partial.message_len {
                out.push(Assembled::Whole {
                    header: partial.header,
                    bytes: partial.bytes,
                });
            } else {
                out.push(Assembled::Incomplete {
                    header: partial.header,
                });
            }
        } else {
            self.threads.insert(thread, Thread::Building(partial));
        }
        Ok(())
    }

    /// Messages still waiting for chunks.
    pub fn pending(&self) -> usize {
        self.threads
            .values()
            .filter(|t| matches!(t, Thread::Building(_)))
            .count()
    }
}

/// The message bytes a chunk record carries (`read_chunk` checked the record's length).
fn chunk_bytes<'a>(chunk: &MessageChunk, record: &'a [u8]) -> &'a [u8] {
    let start = size_of::<MessageChunk>() - MESSAGE_CHUNK_BYTES;
    let len = (chunk.len as usize).min(MESSAGE_CHUNK_BYTES);
    &record[start..start + len]
}

fn read_chunk(record: &[u8]) -> Result<MessageChunk, DecodeError> {
    let chunk: MessageChunk = read_record(record, kind::MESSAGE_CHUNK)?;
    if chunk.header.kind != kind::MESSAGE_CHUNK {
        return Err(DecodeError::UnknownKind(chunk.header.kind));
    }
    Ok(chunk)
}

/// The ring-buffer records a probe hit sends for `message` (tests, and the recorded sessions'
/// builders): chunks of `MESSAGE_CHUNK_BYTES`, or one truncated chunk past `max_chunks`.
pub fn chunk_records(
    probe_id: u16,
    thread: (u32, u32),
    ktime_ns: u64,
    message: &[u8],
    max_chunks: usize,
) -> Vec<Vec<u8>> {
    let header = EventHeader {
        kind: kind::MESSAGE_CHUNK,
        probe_id,
        candidate: 0,
        flags: 0,
        pid: thread.0,
        tid: thread.1,
        ktime_ns,
    };
    let record = |offset: usize, bytes: &[u8], truncated: bool| {
        let mut chunk = MessageChunk {
            header,
            message_len: message.len() as u64,
            message_id: ktime_ns,
            offset: offset as u32,
            len: bytes.len() as u32,
            truncated: u32::from(truncated),
            _pad: 0,
            bytes: [0; MESSAGE_CHUNK_BYTES],
        };
        chunk.bytes[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `MessageChunk` is plain integers with no padding (asserted in
        // observer-common); its bytes are initialized.
        unsafe {
            std::slice::from_raw_parts((&raw const chunk).cast::<u8>(), size_of::<MessageChunk>())
        }
        .to_vec()
    };
    if message.len().div_ceil(MESSAGE_CHUNK_BYTES) > max_chunks {
        return vec![record(0, &message[..MESSAGE_CHUNK_BYTES], true)];
    }
    message
        .chunks(MESSAGE_CHUNK_BYTES)
        .enumerate()
        .map(|(i, bytes)| record(i * MESSAGE_CHUNK_BYTES, bytes, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(reassembly: &mut Reassembly, records: &[Vec<u8>]) -> Vec<Assembled> {
        let mut out = Vec::new();
        for record in records {
            reassembly.push(record, &mut out).expect("a chunk record");
        }
        out
    }

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn chunks_of_interleaved_threads_come_back_whole() {
        let long = message(3 * MESSAGE_CHUNK_BYTES + 17);
        let short = message(40);
        let a = chunk_records(11, (1, 1), 100, &long, 16);
        let b = chunk_records(12, (1, 2), 101, &short, 16);
        assert_eq!(a.len(), 4);
        let mut reassembly = Reassembly::default();
        let records = [
            a[0].clone(),
            b[0].clone(),
            a[1].clone(),
            a[2].clone(),
            a[3].clone(),
        ];
        let out = push_all(&mut reassembly, &records);
        let wholes: Vec<(u32, Vec<u8>)> = out
            .into_iter()
            .map(|m| match m {
                Assembled::Whole { header, bytes } => (header.tid, bytes),
                other => panic!("not whole: {other:?}"),
            })
            .collect();
        assert_eq!(wholes, vec![(2, short), (1, long)]);
        assert_eq!(reassembly.pending(), 0);
    }

    #[test]
    fn a_message_past_the_cap_is_truncated_and_carries_only_its_first_chunk() {
        let long = message(2 * MESSAGE_CHUNK_BYTES + 1);
        let records = chunk_records(11, (1, 1), 5, &long, 2);
        assert_eq!(records.len(), 1);
        let out = push_all(&mut Reassembly::default(), &records);
        assert!(matches!(
            out.as_slice(),
            [Assembled::Truncated { message_len, prefix, .. }]
                if *message_len == long.len() as u64 && prefix[..] == long[..MESSAGE_CHUNK_BYTES]
        ));
    }

    #[test]
    fn an_unreadable_chunk_ends_its_message_and_the_rest_of_it_is_dropped() {
        let long = message(3 * MESSAGE_CHUNK_BYTES);
        let mut records = chunk_records(11, (1, 1), 5, &long, 16);
        // The second chunk could not be read: it came empty.
        let empty_at = std::mem::offset_of!(MessageChunk, len);
        records[1][empty_at..empty_at + 4].copy_from_slice(&0u32.to_le_bytes());
        let mut reassembly = Reassembly::default();
        let out = push_all(&mut reassembly, &records);
        assert!(
            matches!(out.as_slice(), [Assembled::Incomplete { .. }]),
            "{out:?}"
        );
        assert_eq!(reassembly.pending(), 0);
        // A message that could not be read at all: one empty chunk.
        let unreadable = chunk_records(12, (1, 2), 7, &[], 16);
        assert!(unreadable.is_empty(), "an empty message has no chunks");
        let mut marker = chunk_records(12, (1, 2), 7, &message(10), 16).remove(0);
        marker[empty_at..empty_at + 4].copy_from_slice(&0u32.to_le_bytes());
        let out = push_all(&mut reassembly, &[marker]);
        assert!(
            matches!(out.as_slice(), [Assembled::Incomplete { .. }]),
            "{out:?}"
        );
    }

    #[test]
    fn a_truncation_on_a_thread_mid_message_ends_that_message_first() {
        let first = chunk_records(11, (1, 1), 5, &message(2 * MESSAGE_CHUNK_BYTES), 16);
        let cut = chunk_records(11, (1, 1), 9, &message(3 * MESSAGE_CHUNK_BYTES), 2);
        let out = push_all(
            &mut Reassembly::default(),
            &[first[0].clone(), cut[0].clone()],
        );
        assert!(
            matches!(
                out.as_slice(),
                [Assembled::Incomplete { .. }, Assembled::Truncated { .. }]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_message_missing_a_chunk_is_incomplete_never_whole() {
        let first = chunk_records(11, (1, 1), 5, &message(2 * MESSAGE_CHUNK_BYTES + 1), 16);
        let next = chunk_records(11, (1, 1), 9, &message(10), 16);
        let mut reassembly = Reassembly::default();
        // The middle chunk was lost; the next message on the thread shows it.
        let out = push_all(
            &mut reassembly,
            &[first[0].clone(), first[2].clone(), next[0].clone()],
        );
        assert!(matches!(out[0], Assembled::Incomplete { .. }), "{out:?}");
        assert!(matches!(&out[1], Assembled::Whole { bytes, .. } if bytes.len() == 10));
        assert_eq!(out.len(), 2);
        // A message whose last chunk is lost shows when the thread's next message starts.
        let mut reassembly = Reassembly::default();
        let out = push_all(&mut reassembly, &[first[0].clone(), first[1].clone()]);
        assert!(out.is_empty());
        assert_eq!(reassembly.pending(), 1);
        let out = push_all(&mut reassembly, &[next[0].clone()]);
        assert!(matches!(out[0], Assembled::Incomplete { .. }), "{out:?}");
        assert!(matches!(out[1], Assembled::Whole { .. }), "{out:?}");
    }
}
