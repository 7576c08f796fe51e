//! A small per-thread cache of I/O buffers. Idle clients hold no buffers (that is what
//! keeps them under 2 KiB each), so every transaction would otherwise allocate and free
//! its read and write buffers; 8 KiB blocks are past malloc's fast per-thread cache, and
//! that churn cost ~10% of the instructions per transaction. Buffers move between worker
//! threads freely; each thread keeps at most [`KEEP`] of them.

use std::cell::RefCell;

use bytes::BytesMut;

/// Capacity of a cached buffer: one read takes a typical request whole.
pub(crate) const SIZE: usize = 8 * 1024;

/// Buffers kept per thread (at most 512 KiB per worker thread).
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`SIZE`] bytes, from the cache when it has one.
pub(crate) fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives an emptied output buffer's memory back (nothing when it still holds bytes or
/// has no memory).
pub(crate) fn give_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give(buf);
    }
}

/// Gives `buf`'s memory back for reuse (emptying it). Buffers that grew large (COPY, big
/// rows) or lost their room are freed instead, so the cache never pins much memory.
pub(crate) fn give(buf: &mut BytesMut) {
    let mut buf = std::mem::take(buf);
    buf.clear();
    // A buffer that was read from and advanced has its room at the front, so its
    // `capacity()` looks short: take that room back (free when this is the only handle on
    // the memory). Without this, the client's read buffer was freed and a new one
    // allocated on every transaction.
    if !buf.try_reclaim(SIZE) || !(SIZE..=4 * SIZE).contains(&buf.capacity()) {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    #[test]
    fn reuses_a_buffer_that_was_read_from() {
        let mut a = take();
        a.put_slice(&[7; 100]);
        a.advance(100);
        assert!(a.capacity() < SIZE, "advanced: the room is at the front");
        let ptr = a.as_ptr();
        give(&mut a);
        let b = take();
        assert_eq!(b.capacity(), SIZE);
        assert_eq!(
            b.as_ptr(),
            ptr.wrapping_sub(100),
            "the same memory, from its start"
        );
    }

    #[test]
    fn reuses_plain_buffers_and_drops_odd_ones() {
        let mut a = take();
        a.put_slice(b"hello");
        let ptr = a.as_ptr();
        give(&mut a);
        assert_eq!(a.capacity(), 0, "the caller keeps nothing");
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "same block again");
        assert!(b.is_empty() && b.capacity() >= SIZE);
        let mut big = BytesMut::with_capacity(64 * SIZE);
        give(&mut big);
        assert!(
            take().capacity() <= 4 * SIZE,
            "large buffers are not cached"
        );
    }
}
