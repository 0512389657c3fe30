//! Invite strings (`Invite::from_str`): `umbra2:` invites and the refused
//! `umbra1:` ones, from any text a user pastes or scans.
//!
//! Checks: an invite that parses prints to a string that parses to the same
//! invite; its name has no ':' or control characters and at most 64 of them.
#![no_main]

use client_sdk::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(invite) = text.parse::<Invite>() else {
        return;
    };
    assert!(invite.name.chars().count() <= 64);
    assert!(!invite.name.chars().any(|c| c == ':' || c.is_control()));
    let again: Invite = invite.to_string().parse().expect("a printed invite parses");
    assert_eq!(again, invite);
});
