//! Group roles as stored: one owner (the creator, until they transfer ownership), admins
//! appointed by the owner, members. Direct conversations have no roles: both participants
//! are members, and nothing about them changes.
//!
//! Who may change what is not decided here: the rules are message-service's `ops`, handed
//! to the writing methods as a check of the [`Roster`]. The check runs inside the write's
//! transaction, after [`lock_roster!`] took the conversation's row lock, so two concurrent
//! edits (an owner demoting an admin while that admin removes someone) are judged one after
//! the other, each on the state the other left.

use std::collections::BTreeMap;

use proto::pb::ConversationKind;
pub use proto::pb::ParticipantRole as Role;

/// A conversation's participants with their roles, ascending by user id.
pub(super) const ROSTER: &str =
    "SELECT user_id, role FROM participants WHERE conversation_id = $1 ORDER BY user_id";

/// The stored name of a role (the `participants.role` column).
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member | Role::Unspecified => "member",
    }
}

/// A stored role name as a role; anything unknown reads as a member (the least power).
fn parse_role(name: &str) -> Role {
    match name {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        _ => Role::Member,
    }
}

/// Who is in a conversation and with which role: what a rule check sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// Direct or group.
    pub kind: ConversationKind,
    /// Every participant's role.
    pub members: BTreeMap<i64, Role>,
}

impl Roster {
    /// A roster from the kind column and [`ROSTER`] rows.
    pub(super) fn from_rows(kind: i64, rows: Vec<(i64, String)>) -> Roster {
        Roster {
            kind: i32::try_from(kind)
                .ok()
                .and_then(|k| ConversationKind::try_from(k).ok())
                .unwrap_or(ConversationKind::Group),
            members: rows.into_iter().map(|(u, r)| (u, parse_role(&r))).collect(),
        }
    }

    /// `user`'s role, if they are a participant.
    pub fn role(&self, user: i64) -> Option<Role> {
        self.members.get(&user).copied()
    }

    /// The owner, if the group has one.
    pub fn owner(&self) -> Option<i64> {
        self.members
            .iter()
            .find(|(_, r)| **r == Role::Owner)
            .map(|(u, _)| *u)
    }

    /// The admins, ascending.
    pub fn admins(&self) -> Vec<i64> {
        self.members
            .iter()
            .filter(|(_, r)| **r == Role::Admin)
            .map(|(u, _)| *u)
            .collect()
    }

    /// Whether this is a direct conversation (no roles, no membership changes).
    pub fn is_direct(&self) -> bool {
        self.kind == ConversationKind::Direct
    }
}

/// Inside the open transaction `$tx`: locks conversation `$id`'s row (concurrent
/// membership and role edits then wait for each other) and evaluates to its [`Roster`],
/// or `None` when the conversation does not exist.
macro_rules! lock_roster {
    ($tx:expr, $id:expr) => {{
        let kind: Option<i64> = sqlx::query_scalar(
            "UPDATE conversations SET last_seq = last_seq WHERE id = $1 RETURNING kind",
        )
        .bind($id)
        .fetch_optional(&mut *$tx)
        .await?;
        match kind {
            None => None,
            Some(kind) => {
                let rows: Vec<(i64, String)> = sqlx::query_as($crate::store::roles::ROSTER)
                    .bind($id)
                    .fetch_all(&mut *$tx)
                    .await?;
                Some($crate::store::roles::Roster::from_rows(kind, rows))
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_names_are_members() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(parse_role(role_name(r)), r);
        }
        assert_eq!(parse_role("root"), Role::Member);
    }

    #[test]
    fn a_roster_names_its_owner_and_admins() {
        let r = Roster::from_rows(
            2,
            vec![
                (1, "owner".into()),
                (2, "admin".into()),
                (3, "member".into()),
                (4, "admin".into()),
            ],
        );
        assert_eq!(r.owner(), Some(1));
        assert_eq!(r.admins(), vec![2, 4]);
        assert_eq!(r.role(3), Some(Role::Member));
        assert_eq!(r.role(5), None);
        assert!(!r.is_direct());
    }
}
