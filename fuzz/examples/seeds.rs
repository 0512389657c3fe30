//! Writes the seed corpora: a few real, valid inputs per fuzz target, made
//! with the same fixed keys the targets use. Deterministic: running it
//! again rewrites the same files.
//!
//! ```text
//! cd fuzz && cargo run --example seeds -- seeds
//! ```

use client_sdk::Invite;
use client_sdk::fuzzing::Reset;
use net::dirclient::AuthorityRef;
use protocol::frame::{self, FrameKind};
use protocol::messages::{
    ACK_BODY, FETCH_SURBS, FetchReply, FetchRequest, Listing, RefusalReason, Refused, Request,
    StoreRefused,
};
use protocol::packet::{self, PACKET_SIZE, Peeled};
use protocol::reliable::{Fragment, Kind, encode_receipt};
use protocol::topology::{DESCRIPTOR_DOMAIN, Role, Signed, TOPOLOGY_DOMAIN, VOTE_DOMAIN};
use std::path::{Path, PathBuf};
use std::time::Duration;
use umbra_fuzz::*;

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("seed file");
    }
}

/// A forward packet over the fixed route carrying `message` to the final hop.
fn forward_packet(message: &[u8], seed: u64) -> Vec<u8> {
    packet::build_packet(
        &mut rng(seed),
        &route(),
        &[0x77; 32],
        [0; 16],
        &[Duration::from_millis(5); HOPS],
        message,
    )
    .expect("a packet over the fixed route")
}

/// The payload the final hop delivers for a reply `body` sent through the
/// fixed SURB: what the gateway puts into a Deliver frame.
fn delivered_reply(body: &[u8]) -> Vec<u8> {
    let (surb, _) = surb();
    let (_, mut p) = packet::use_surb(&surb, body).expect("a reply through the SURB");
    for i in 0..HOPS {
        match epoch_key(i).peel(&p).expect("the route peels its reply") {
            Peeled::Forward { packet, .. } => p = packet,
            Peeled::Final { payload, .. } => return payload,
        }
    }
    panic!("the reply never reached its final hop")
}

fn fragment(
    kind: Kind,
    id: u8,
    seq: u64,
    index: u32,
    count: u32,
    chunk: &[u8],
    total: u32,
) -> Vec<u8> {
    Fragment {
        kind,
        msg_id: [id; 16],
        session: 9,
        seq,
        index,
        count,
        total_len: total,
        chunk: chunk.to_vec(),
    }
    .encode()
}

fn fetch_reply_with_fragment() -> Vec<u8> {
    let f = fragment(Kind::Message, 1, 1, 0, 1, b"hello", 5);
    FetchReply {
        seqs: vec![3, 4],
        remaining: 1,
        message: Some((3, seal(&f))),
    }
    .encode()
    .expect("a fetch reply")
}

fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let (surb, _) = surb();
    let store = Request::Store {
        dropbox: dropbox().id,
        ciphertext: seal(b"a stored message"),
    };
    let acked = Request::StoreAcked {
        dropbox: dropbox().id,
        ciphertext: seal(b"an acked message"),
        reply_epoch: EPOCH,
        surb: surb.clone(),
    };
    let batched = Request::StoreBatched {
        dropbox: dropbox().id,
        batch: [5; 16],
        slot: 3,
        ciphertext: seal(b"a batched fragment"),
    };
    let ask = Request::AckBatch {
        batch: [5; 16],
        count: 4,
        wait_ms: 1500,
        reply_epoch: EPOCH,
        surb: surb.clone(),
    };
    let fetch = Request::Fetch(FetchRequest::new_signed_at(
        &dropbox(),
        2,
        4,
        true,
        NOW_MS,
        EPOCH,
        vec![surb; FETCH_SURBS],
    ));
    [
        ("store", store),
        ("store_acked", acked),
        ("store_batched", batched),
        ("ack_batch", ask),
        ("fetch", fetch),
        ("drop", Request::Drop),
    ]
    .into_iter()
    .map(|(n, r)| (n, r.encode().expect("a request")))
    .collect()
}

fn replies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ack", ACK_BODY.to_vec()),
        ("store_refused", StoreRefused::BoxFull.body()),
        (
            "fetch_refused",
            Refused {
                reason: RefusalReason::Time,
                gateway_s: NOW_MS / 1000,
            }
            .encode(),
        ),
        (
            "listing",
            Listing {
                seqs: vec![5, 6, 9],
                remaining: 2,
            }
            .encode()
            .expect("a listing"),
        ),
        ("fetch_reply", fetch_reply_with_fragment()),
        (
            "empty_reply",
            FetchReply {
                seqs: vec![],
                remaining: 0,
                message: None,
            }
            .encode()
            .expect("a fetch reply"),
        ),
    ]
}

fn records16(recs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in recs {
        v.extend_from_slice(&(r.len() as u16).to_be_bytes());
        v.extend_from_slice(r);
    }
    v
}

fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(rest);
    v
}

fn json(s: &Signed) -> String {
    serde_json::to_string(s).expect("signed JSON")
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let out = Out(PathBuf::from(&dir));
    let packet = forward_packet(&Request::Drop.encode().expect("drop"), 10);
    assert_eq!(packet.len(), PACKET_SIZE);

    // link_frame: bodies of every kind, and a stream of whole frames.
    let sphinx = frame::encode(FrameKind::Sphinx, EPOCH, &packet).expect("frame");
    let subscribe = frame::encode(FrameKind::Subscribe, 0, &[0x77; 32]).expect("frame");
    out.put("link_frame", "sphinx_body", &sphinx[2..]);
    out.put("link_frame", "subscribe_body", &subscribe[2..]);
    out.put(
        "link_frame",
        "stream",
        with(
            &[7],
            &[sphinx.clone(), subscribe.clone(), sphinx.clone()].concat(),
        ),
    );

    // client_frame: Inject, Subscribe, and Deliver frames of every reply.
    let inject =
        frame::encode_parts(FrameKind::Inject, EPOCH, &[&hop(0).id, &packet]).expect("frame");
    out.put("client_frame", "inject", &inject);
    out.put("client_frame", "subscribe", &subscribe);
    for (name, body) in replies() {
        let payload = delivered_reply(&body);
        let f =
            frame::encode_parts(FrameKind::Deliver, 0, &[&[0x99; 16], &payload]).expect("frame");
        out.put("client_frame", &format!("deliver_{name}"), f);
    }

    // sphinx_node: packets over the fixed route carrying each request, and a reply.
    for (i, (name, req)) in requests().into_iter().enumerate() {
        if req.len() <= packet::MAX_MESSAGE_LEN {
            out.put("sphinx_node", name, forward_packet(&req, 20 + i as u64));
        }
    }
    let (surb, _) = surb();
    let (_, reply) = packet::use_surb(&surb, ACK_BODY).expect("a reply");
    out.put("sphinx_node", "reply", reply);

    for (name, req) in requests() {
        out.put("gateway_request", name, req);
    }
    for (name, body) in replies() {
        out.put("gateway_reply", name, body);
    }

    // fragment_reassembly: records (contact, time step, fragment).
    let msg: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    let parts: Vec<Vec<u8>> = msg
        .chunks(1024)
        .enumerate()
        .map(|(i, c)| {
            with(
                &[1, 2],
                &fragment(Kind::Message, 2, 1, i as u32, 3, c, 2500),
            )
        })
        .collect();
    let mut recs = vec![
        parts[2].clone(),
        parts[0].clone(),
        parts[0].clone(),
        parts[1].clone(),
    ];
    recs.push(with(
        &[1, 0x90],
        &fragment(Kind::Message, 3, 3, 0, 1, b"third", 5),
    ));
    recs.push(with(
        &[1, 1],
        &fragment(Kind::Message, 4, 2, 0, 1, b"second", 6),
    ));
    let receipt = encode_receipt(&[[2; 16], [4; 16]]);
    recs.push(with(
        &[2, 1],
        &fragment(Kind::Receipt, 5, 0, 0, 1, &receipt, receipt.len() as u32),
    ));
    out.put("fragment_reassembly", "messages", records16(&recs));

    out.put("receipt", "two", encode_receipt(&[[1; 16], [2; 16]]));
    out.put(
        "receipt",
        "three_and_junk",
        with(&encode_receipt(&[[3; 16], [9; 16], [1; 16]]), &[5, 5]),
    );

    let reset = Reset {
        identity: [0x31; 32],
        one_time_key: [0x32; 32],
        undecryptable: vec![[1; 16], [2; 16]],
    };
    out.put("contact_control", "reset", reset.encode());
    out.put(
        "contact_control",
        "prekey_envelope",
        with(&[1, 0], &[0x33; 120]),
    );
    out.put(
        "contact_control",
        "normal_envelope",
        with(&[1, 1], &[0x34; 80]),
    );

    out.put(
        "typed_content",
        "text_zstd",
        client_sdk::content::encode(
            client_sdk::ContentKind::Text,
            None,
            "hello ".repeat(40).as_bytes(),
        ),
    );
    let photo = client_sdk::Attachment {
        name: "a.jpg".into(),
        mime: "image/jpeg".into(),
        width: 4,
        height: 3,
        thumbnail: vec![1; 20],
        preview_of: Some([5; 16]),
        ..Default::default()
    };
    out.put(
        "typed_content",
        "preview",
        client_sdk::content::encode(client_sdk::ContentKind::Preview, Some(&photo), &[]),
    );
    out.put(
        "typed_content",
        "group_keys",
        client_sdk::fuzzing::GroupKeys {
            op: 1,
            id: [1; 32],
            epoch: 2,
            secret: [3; 32].into(),
            name: "g".into(),
            members: vec![([4; 32], 1, "m".into())],
        }
        .encode(),
    );
    out.put(
        "typed_content",
        "group_announce",
        client_sdk::fuzzing::BoxItem::Added {
            sender: [6; 32],
            sig: [8; 64],
            member: [7; 32],
            name: "n".into(),
        }
        .encode(),
    );

    let invite = Invite {
        public: [7; 32],
        olm_identity: [8; 32],
        one_time_key: [9; 32],
        name: "alice".into(),
    };
    out.put("invite", "alice", invite.to_string());
    out.put(
        "invite",
        "unnamed",
        invite.to_string().trim_end_matches("alice"),
    );
    out.put(
        "invite",
        "old",
        format!("umbra1:{}:bob", hex::encode([7; 32])),
    );

    // Signed documents.
    let auth = authority_key();
    let topo_body = serde_json::to_string(&topology()).expect("topology JSON");
    let vote_body = serde_json::to_string(&vote()).expect("vote JSON");
    let topo = json(&sign_text(&topo_body, TOPOLOGY_DOMAIN, &auth));
    let vote = json(&sign_text(&vote_body, VOTE_DOMAIN, &auth));
    out.put(
        "topology_document",
        "signed_topology",
        with(&[0], topo.as_bytes()),
    );
    out.put(
        "topology_document",
        "signed_vote",
        with(&[0], vote.as_bytes()),
    );
    out.put(
        "topology_document",
        "topology_body",
        with(&[1], topo_body.as_bytes()),
    );
    out.put(
        "topology_document",
        "vote_body",
        with(&[2], vote_body.as_bytes()),
    );
    out.put("directory_response", "topology", &topo);
    out.put("directory_response", "vote", &vote);
    out.put(
        "directory_response",
        "authority_key",
        format!("{}\n", hex::encode(auth.verifying_key().to_bytes())),
    );

    for role in [Role::Mix, Role::Gateway] {
        let body = serde_json::to_string(&descriptor(role)).expect("descriptor JSON");
        let signed = json(&sign_text(&body, DESCRIPTOR_DOMAIN, &node_key()));
        let name = format!("{role:?}").to_lowercase();
        out.put(
            "descriptor_document",
            &format!("signed_{name}"),
            with(&[0], signed.as_bytes()),
        );
        out.put(
            "descriptor_document",
            &format!("{name}_body"),
            with(&[1], body.as_bytes()),
        );
        out.put("directory_register", &name, signed);
    }

    let authorities = [AuthorityRef {
        url: "http://127.0.0.1:8000".into(),
        key: hex::encode(auth.verifying_key().to_bytes()),
    }];
    out.put(
        "config_toml",
        "directory",
        directory::DirectoryConfig::example(),
    );
    out.put(
        "config_toml",
        "mixnode",
        mixnode::example_config(&authorities, 1),
    );
    out.put(
        "config_toml",
        "gateway",
        gateway::GatewayConfig::example(&authorities, 1),
    );
    out.put(
        "config_toml",
        "admission",
        format!(
            "[[node]]\nidentity = \"{}\"\nrole = \"gateway\"\nnote = \"gw-1\"\n",
            hex::encode([0x60; 32])
        ),
    );
    println!("seeds written under {}", Path::new(&dir).display());
}
