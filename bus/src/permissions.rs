//! Who may publish and subscribe to what on NATS: one user per service, allowed only the
//! subjects that service's code uses. This is the one list; the shipped server configs are
//! rendered from it and a test keeps them equal:
//!
//! - `deploy/nats/auth.conf` ([`server_conf`]): included by the compose stack's NATS and by
//!   `scripts/cluster.sh` (passwords from the server's environment, `$INDABA_NATS_…_PASSWORD`);
//! - `k8s/nats/values.yaml`, between the `BEGIN/END bus::permissions` markers
//!   ([`helm_values`]): the NATS chart's `config.merge.authorization`.
//!
//! The rules, and why:
//! - Requests go to a service's queue group, so only that service subscribes to its request
//!   subjects; it answers through NATS's `allow_responses` (only to the reply subject of a
//!   request it received), never by a general publish right on inboxes.
//! - Each service gets replies on its own inbox prefix (`_INBOX.<user>`, set by
//!   `NATS_INBOX_PREFIX`) and may subscribe only there: nobody reads another's replies.
//! - Only message-service publishes deliveries (`indaba.v1.deliver.gw.*`) and push jobs;
//!   only presence-service publishes presence changes; only gateways publish routing events
//!   and delivery acks, and only gateways read deliveries. A gateway's credentials cannot
//!   send as message-service, and no other service can read what gateways are sent.
//! - JetStream: each side may call only the API subjects of the push queue's stream and
//!   consumer that it needs, not `$JS.API.>` (which would let it delete the stream).

use proto::subjects as s;

/// One NATS user and its allow-lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// NATS user name (also the service's role name).
    pub user: &'static str,
    /// The variable operators set to this user's password (compose's `.env`, the Helm
    /// values' Secret); the server reads it quoted, see [`Role::quoted_password_var`].
    pub password_var: &'static str,
    /// Subjects (wildcards allowed) the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer requests it received (on their reply subject only).
    pub allow_responses: bool,
}

impl Role {
    /// The NATS *server's* environment variable the config references: the password in
    /// double quotes. nats-server parses a referenced variable's value as a config value, so
    /// an unquoted password that starts with a digit (every second `openssl rand -hex`) is
    /// read as a number and the server refuses to start; quoted, any password is a string.
    pub fn quoted_password_var(&self) -> String {
        format!("{}_QUOTED", self.password_var)
    }

    /// The reply-subject prefix this user's client must use (`NATS_INBOX_PREFIX`).
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.user)
    }
}

/// NATS user name of the gateways.
pub const GATEWAY: &str = "gateway";
/// NATS user name of message-service.
pub const MESSAGE_SERVICE: &str = "message-service";
/// NATS user name of presence-service.
pub const PRESENCE_SERVICE: &str = "presence-service";
/// NATS user name of push-service.
pub const PUSH_SERVICE: &str = "push-service";

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn inbox(user: &str) -> String {
    format!("_INBOX.{user}.>")
}

/// JetStream API subjects of the push queue's stream.
fn push_stream_api() -> Vec<String> {
    // `get_or_create_stream`: INFO, then CREATE when it does not exist yet.
    ["INFO", "CREATE"]
        .iter()
        .map(|op| format!("$JS.API.STREAM.{op}.{}", s::PUSH_STREAM))
        .collect()
}

/// Message-service's request subjects (gateways may request them).
fn message_requests() -> Vec<&'static str> {
    vec![
        s::MSG_SEND,
        s::MSG_SEND_BATCH,
        s::CONV_CREATE,
        s::CONV_GET,
        s::CONV_SHARED,
        s::RECEIPTS_MARK,
        s::TYPING,
        s::MSG_LIST,
        s::CONV_LIST,
        s::CONV_MEMBERS,
        s::CONV_ROLE,
        s::MSG_GET,
        s::UNREAD,
        s::MSG_SINCE,
        s::MSG_CHANGE,
        s::MSG_THREAD,
        s::MSG_PINS,
        s::MSG_READS,
        s::MSG_UPLOAD,
        s::MSG_ATTACHMENT,
    ]
}

/// Push-service's request subjects.
fn push_requests() -> Vec<&'static str> {
    vec![
        s::PUSH_REGISTER,
        s::PUSH_UNREGISTER,
        s::PUSH_LIST_DEVICES,
        s::PUSH_MUTE,
        s::PUSH_PREFS,
    ]
}

/// Every role, in the order the configs list them.
pub fn roles() -> Vec<Role> {
    let deliveries = format!("{}*", s::GATEWAY_DELIVERY_PREFIX);

    let mut gw_pub = message_requests();
    gw_pub.extend([s::PRESENCE_GET]);
    gw_pub.extend(push_requests());
    gw_pub.extend([
        s::DELIVERY_ACKS,
        s::CONN_EVENTS,
        s::GATEWAY_HEARTBEAT,
        s::SOCKET_STATUS,
    ]);
    let gateway = Role {
        user: GATEWAY,
        password_var: "INDABA_NATS_GATEWAY_PASSWORD",
        publish: list(&gw_pub),
        subscribe: [
            vec![
                deliveries.clone(),
                s::GATEWAY_RESYNC.into(),
                s::PRESENCE_CHANGES.into(),
            ],
            vec![inbox(GATEWAY)],
        ]
        .concat(),
        allow_responses: false,
    };

    let mut ms_sub = list(&message_requests());
    ms_sub.extend(list(&[s::DELIVERY_ACKS, s::ROUTING_ALL]));
    ms_sub.push(inbox(MESSAGE_SERVICE));
    let message_service = Role {
        user: MESSAGE_SERVICE,
        password_var: "INDABA_NATS_MESSAGE_SERVICE_PASSWORD",
        publish: [
            vec![deliveries, s::GATEWAY_RESYNC.into(), s::PUSH_JOBS.into()],
            push_stream_api(),
        ]
        .concat(),
        subscribe: ms_sub,
        allow_responses: true,
    };

    let presence_service = Role {
        user: PRESENCE_SERVICE,
        password_var: "INDABA_NATS_PRESENCE_SERVICE_PASSWORD",
        publish: list(&[
            s::PRESENCE_CHANGES,
            s::PRESENCE_INSTANCES,
            s::GATEWAY_RESYNC,
        ]),
        subscribe: [
            list(&[s::ROUTING_ALL, s::PRESENCE_GET, s::PRESENCE_INSTANCES]),
            vec![inbox(PRESENCE_SERVICE)],
        ]
        .concat(),
        allow_responses: true,
    };

    let consumer = format!("{}.{}", s::PUSH_STREAM, s::PUSH_CONSUMER);
    let mut push_pub = vec![s::PRESENCE_GET.to_owned()];
    push_pub.extend(push_stream_api());
    push_pub.extend([
        format!("$JS.API.CONSUMER.INFO.{consumer}"),
        // The create call's subject depends on the server version and the filter.
        format!("$JS.API.CONSUMER.CREATE.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{consumer}"),
        // Acknowledgements (ack, nak with delay) go to the job's `$JS.ACK` reply subject.
        format!("$JS.ACK.{consumer}.>"),
    ]);
    let push_service = Role {
        user: PUSH_SERVICE,
        password_var: "INDABA_NATS_PUSH_SERVICE_PASSWORD",
        publish: push_pub,
        subscribe: [list(&push_requests()), vec![inbox(PUSH_SERVICE)]].concat(),
        allow_responses: true,
    };

    vec![gateway, message_service, presence_service, push_service]
}

/// The role of NATS user `user`.
pub fn role(user: &str) -> Option<Role> {
    roles().into_iter().find(|r| r.user == user)
}

const GENERATED: &str = "generated from bus/src/permissions.rs (bus::permissions); do not edit: \
change the list there and run `INDABA_BLESS=1 cargo test -p bus permissions`";

/// A nats-server array, one quoted subject per line at `indent`.
fn conf_list(items: &[String], indent: &str) -> String {
    let lines: Vec<String> = items.iter().map(|i| format!("{indent}  \"{i}\"")).collect();
    format!("[\n{}\n{indent}]", lines.join(",\n"))
}

/// A YAML block sequence, one quoted subject per line at `indent`.
fn yaml_list(items: &[String], indent: &str) -> String {
    items
        .iter()
        .map(|i| format!("{indent}- \"{i}\"\n"))
        .collect()
}

/// The nats-server `authorization` block: every role, its password given by `password`
/// (the shipped file passes `$VAR`, a reference to the server's environment; tests pass a
/// literal in quotes).
pub fn server_conf_with(password: impl Fn(&Role) -> String) -> String {
    let mut out = format!("# {GENERATED}\nauthorization {{\n  users = [\n");
    for r in roles() {
        out.push_str(&format!(
            "    {{\n      user: \"{}\"\n      password: {}\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n",
            r.user,
            password(&r),
            conf_list(&r.publish, "        "),
            conf_list(&r.subscribe, "        ")
        ));
        if r.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("      }\n    }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

/// `deploy/nats/auth.conf`: passwords from the server's environment (quoted values).
pub fn server_conf() -> String {
    server_conf_with(|r| format!("${}", r.quoted_password_var()))
}

/// The `authorization` entry of the NATS Helm chart's `config.merge` (indented for
/// `k8s/nats/values.yaml`); `<< $VAR >>` is the chart's unquoted environment reference.
pub fn helm_values() -> String {
    let mut out = format!("    # {GENERATED}\n    authorization:\n      users:\n");
    for r in roles() {
        out.push_str(&format!(
            "        - user: {}\n          password: << ${} >>\n          permissions:\n            publish:\n              allow:\n{}            subscribe:\n              allow:\n{}",
            r.user,
            r.quoted_password_var(),
            yaml_list(&r.publish, "                "),
            yaml_list(&r.subscribe, "                ")
        ));
        if r.allow_responses {
            out.push_str("            allow_responses: true\n");
        }
    }
    out
}

/// Whether NATS subject pattern `pattern` (`*`, `>`) matches subject `subject`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = subject.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn may_publish(user: &str, subject: &str) -> bool {
        role(user)
            .unwrap()
            .publish
            .iter()
            .any(|p| matches(p, subject))
    }

    fn may_subscribe(user: &str, subject: &str) -> bool {
        role(user)
            .unwrap()
            .subscribe
            .iter()
            .any(|p| matches(p, subject))
    }

    #[test]
    fn patterns_match_like_nats() {
        assert!(matches("indaba.v1.deliver.gw.*", "indaba.v1.deliver.gw.g1"));
        assert!(!matches(
            "indaba.v1.deliver.gw.*",
            "indaba.v1.deliver.gw.g1.x"
        ));
        assert!(matches("_INBOX.gateway.>", "_INBOX.gateway.abc.1"));
        assert!(!matches("_INBOX.gateway.>", "_INBOX.gateway"));
        assert!(!matches("indaba.v1.msg.send", "indaba.v1.msg.sendx"));
    }

    #[test]
    fn a_gateway_cannot_act_as_message_service() {
        let delivery = s::gateway_delivery("g1");
        assert!(!may_publish(GATEWAY, &delivery));
        assert!(may_publish(MESSAGE_SERVICE, &delivery));
        assert!(may_subscribe(GATEWAY, &delivery));
        assert!(
            !may_subscribe(GATEWAY, s::MSG_SEND),
            "only message-service serves sends"
        );
        assert!(!may_publish(GATEWAY, s::PUSH_JOBS));
        assert!(!may_publish(GATEWAY, s::PRESENCE_CHANGES));
        assert!(!may_subscribe(GATEWAY, s::ROUTING_ALL));
        assert!(!may_subscribe(GATEWAY, "_INBOX.message-service.x"));
        for other in [MESSAGE_SERVICE, PRESENCE_SERVICE, PUSH_SERVICE] {
            assert!(!may_subscribe(other, &delivery), "{other} reads deliveries");
            assert!(
                !may_publish(other, s::CONN_EVENTS),
                "{other} forges routing"
            );
        }
        assert!(!role(GATEWAY).unwrap().allow_responses);
    }

    /// Every subject in `proto/src/subjects.rs` has a publisher and a subscriber among the
    /// roles: a subject added there without a permission here fails this test, not the
    /// deployment.
    #[test]
    fn every_subject_has_a_publisher_and_a_subscriber() {
        let src = std::fs::read_to_string(repo().join("proto/src/subjects.rs")).unwrap();
        let consts: Vec<(&str, &str)> = src
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": &str = \"")?;
                Some((name, rest.strip_suffix("\";")?))
            })
            .collect();
        assert!(consts.len() > 20, "parsed {consts:?}");
        let roles = roles();
        for (name, value) in consts {
            // Queue groups and the stream/consumer names are not subjects.
            if !value.starts_with("indaba.") {
                continue;
            }
            // A prefix stands for the subjects under it.
            let subject = match value.strip_suffix('.') {
                Some(prefix) => format!("{prefix}.any"),
                None => value.to_owned(),
            };
            // A wildcard is only subscribed to; its subjects have their own constants.
            let wildcard = subject.contains(['*', '>']);
            let publ = wildcard
                || roles
                    .iter()
                    .any(|r| r.publish.iter().any(|p| matches(p, &subject)));
            // Push jobs are kept by their JetStream stream, read through the consumer API.
            let subs = value == s::PUSH_JOBS
                || roles.iter().any(|r| {
                    r.subscribe
                        .iter()
                        .any(|p| matches(p, &subject) || p == &subject)
                });
            assert!(
                publ && subs,
                "subjects::{name} ({value}) needs a publisher and a subscriber in bus::permissions"
            );
        }
    }

    fn check_shipped(path: &str, expected: &str, actual: &str) {
        if actual.contains(expected) {
            return;
        }
        panic!("{path} is not what bus::permissions renders (INDABA_BLESS=1 rewrites it); expected:\n{expected}");
    }

    #[test]
    fn shipped_nats_configs_are_rendered_from_this_list() {
        let bless = std::env::var_os("INDABA_BLESS").is_some();
        let conf = repo().join("deploy/nats/auth.conf");
        if bless {
            std::fs::write(&conf, server_conf()).unwrap();
        }
        let actual = std::fs::read_to_string(&conf).unwrap_or_default();
        assert_eq!(
            actual,
            server_conf(),
            "deploy/nats/auth.conf is not what bus::permissions renders (INDABA_BLESS=1 rewrites it)"
        );

        let values = repo().join("k8s/nats/values.yaml");
        let text = std::fs::read_to_string(&values).unwrap();
        let begin = "    # BEGIN bus::permissions\n";
        let end = "    # END bus::permissions\n";
        let (head, rest) = text.split_once(begin).expect("BEGIN marker in values.yaml");
        let (_, tail) = rest.split_once(end).expect("END marker in values.yaml");
        let rendered = format!("{head}{begin}{}{end}{tail}", helm_values());
        if bless {
            std::fs::write(&values, &rendered).unwrap();
            return;
        }
        check_shipped("k8s/nats/values.yaml", &rendered, &text);
    }
}
