//! Fragments from contacts and their reassembly, as a client receives them:
//! the input is a sequence of records (contact, time step, fragment bytes);
//! each goes through `Fragment::decode`, then into the `Reassembler` the
//! client holds (per-contact memory bound, expiry, de-duplication), and
//! complete messages into the `Sequencer` that orders them per contact.
//!
//! Checks: a fragment that decodes re-encodes to the same bytes; the
//! reassembler never holds more than its bound per contact; a complete
//! message has the length its fragments announced; the sequencer holds at
//! most its bound of messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::reliable::{Fragment, Kind, Reassembler, Sequencer, decode_receipt};

const CONTACTS: u8 = 3;
const MAX_BYTES: usize = 64 * 1024;
const MAX_HELD: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::<u8>::new(MAX_BYTES, 30.0);
    let mut sequencer = Sequencer::<u8>::new(10.0, 5.0, MAX_HELD);
    let mut t = 0.0;
    for rec in umbra_fuzz::records16(data) {
        let [from, step, bytes @ ..] = rec else {
            continue;
        };
        t += f64::from(*step) / 8.0;
        let from = from % CONTACTS;
        let Ok(f) = Fragment::decode(bytes) else {
            continue;
        };
        assert_eq!(f.encode(), bytes);
        let total_len = f.total_len as usize;
        if let Ok(Some(m)) = reassembler.insert(from, f, t) {
            assert_eq!(m.body.len(), total_len);
            match m.kind {
                Kind::Receipt => {
                    let _ = decode_receipt(&m.body).count();
                }
                Kind::Message => {
                    let _ = sequencer.push(m, t);
                }
                Kind::Control | Kind::Group => {}
            }
        }
        assert!(reassembler.bytes() <= usize::from(CONTACTS) * MAX_BYTES);
        assert!(
            sequencer.held() <= MAX_HELD,
            "sequencer holds {}",
            sequencer.held()
        );
        if step & 0x80 != 0 {
            reassembler.expire(t);
            let _ = sequencer.expire(t);
        }
    }
});
