use super::*;

fn frame(channel: &str) -> Bytes {
    Bytes::from(format!("A-{channel}"))
}

#[test]
fn channels_are_listened_once_and_unlistened_when_nobody_is_left() {
    let mut reg = Registry::default();
    let (a, _ra, _) = reg.subscribe();
    let (b, _rb, _) = reg.subscribe();
    let wait_a = reg.listen(a, b"x");
    let wait_b = reg.listen(b, b"x");
    assert!(
        wait_a.is_some() && wait_b.is_some(),
        "both wait for the upstream LISTEN"
    );
    assert_eq!(reg.plan(), vec![Command::Listen(b"x".to_vec())]);
    assert_eq!(reg.plan(), vec![], "sent once");
    reg.answered(&Command::Listen(b"x".to_vec()));
    let (c, _rc, _) = reg.subscribe();
    assert!(reg.listen(c, b"x").is_none(), "already listening upstream");
    reg.unlisten(a, b"x");
    reg.remove(b);
    assert_eq!(reg.plan(), vec![]);
    reg.remove(c);
    assert_eq!(reg.plan(), vec![Command::Unlisten(b"x".to_vec())]);
    assert!(!reg.unused(), "a is still subscribed");
    reg.remove(a);
    assert!(reg.unused());
}

#[test]
fn waiters_are_released_by_the_answer() {
    let mut reg = Registry::default();
    let (a, _ra, _) = reg.subscribe();
    let mut wait = reg.listen(a, b"x").unwrap();
    reg.plan();
    assert!(wait.try_recv().is_err());
    reg.answered(&Command::Listen(b"x".to_vec()));
    assert!(matches!(
        wait.try_recv(),
        Err(oneshot::error::TryRecvError::Closed)
    ));
}

#[test]
fn a_channel_left_and_rejoined_before_the_unlisten_keeps_its_upstream_listen() {
    let mut reg = Registry::default();
    let (a, _ra, _) = reg.subscribe();
    reg.listen(a, b"x");
    reg.plan();
    reg.answered(&Command::Listen(b"x".to_vec()));
    reg.unlisten(a, b"x");
    assert!(reg.listen(a, b"x").is_none(), "the upstream still listens");
    assert_eq!(reg.plan(), vec![]);
}

#[test]
fn a_rejoin_after_the_unlisten_was_sent_listens_again() {
    let mut reg = Registry::default();
    let (a, _ra, _) = reg.subscribe();
    reg.listen(a, b"x");
    reg.plan();
    reg.answered(&Command::Listen(b"x".to_vec()));
    reg.unlisten(a, b"x");
    assert_eq!(reg.plan(), vec![Command::Unlisten(b"x".to_vec())]);
    assert!(reg.listen(a, b"x").is_some());
    assert_eq!(reg.plan(), vec![Command::Listen(b"x".to_vec())]);
}

#[test]
fn reconnect_listens_on_everything_again() {
    let mut reg = Registry::default();
    let (a, _ra, _) = reg.subscribe();
    reg.listen(a, b"x");
    reg.listen(a, b"y");
    reg.plan();
    reg.disconnected();
    let mut again = reg.plan();
    again.sort_by(|l, r| format!("{l:?}").cmp(&format!("{r:?}")));
    assert_eq!(
        again,
        vec![
            Command::Listen(b"x".to_vec()),
            Command::Listen(b"y".to_vec())
        ]
    );
}

#[test]
fn fan_out_reaches_listeners_of_the_channel_only() {
    let mut reg = Registry::default();
    let (a, mut ra, _) = reg.subscribe();
    let (b, mut rb, _) = reg.subscribe();
    reg.listen(a, b"x");
    reg.listen(b, b"y");
    reg.fan_out(b"x", &frame("x"));
    assert_eq!(ra.try_recv().unwrap(), frame("x"));
    assert!(rb.try_recv().is_err());
    assert_eq!(reg.delivered, 1);
}

#[test]
fn a_listener_that_falls_behind_is_dropped_and_told() {
    let mut reg = Registry::default();
    let (a, mut ra, overflowed) = reg.subscribe();
    let (b, mut rb, _) = reg.subscribe();
    reg.listen(a, b"x");
    reg.listen(b, b"x");
    for _ in 0..CLIENT_QUEUE {
        reg.fan_out(b"x", &frame("x"));
        rb.try_recv().unwrap();
    }
    reg.fan_out(b"x", &frame("x"));
    assert!(overflowed.load(Ordering::Relaxed));
    assert_eq!(reg.overflows, 1);
    assert_eq!(
        rb.try_recv().unwrap(),
        frame("x"),
        "the other listener still gets it"
    );
    for _ in 0..CLIENT_QUEUE {
        ra.try_recv().unwrap();
    }
    assert!(matches!(
        ra.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
}

#[test]
fn channel_names_are_quoted_as_identifiers() {
    assert_eq!(
        Command::Listen(b"a\"b".to_vec()).sql(),
        b"LISTEN \"a\"\"b\""
    );
    assert_eq!(
        Command::Unlisten(b"Chan".to_vec()).sql(),
        b"UNLISTEN \"Chan\""
    );
}
