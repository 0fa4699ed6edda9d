-- Group roles: one owner (the creator, until they transfer), admins appointed by the owner,
-- members. Direct conversations keep every participant a member (they have no roles).
ALTER TABLE participants ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('member', 'admin', 'owner'));
-- Existing groups: the creator becomes the owner, if still a member. A group whose
-- creator had left stays without an owner: only system callers manage it (giving it to
-- whoever joined first could hand it to whoever had taken it over).
UPDATE participants SET role = 'owner'
    WHERE EXISTS (SELECT 1 FROM conversations c
                  WHERE c.id = participants.conversation_id
                    AND c.kind = 2 AND c.created_by = participants.user_id);
-- At most one owner per conversation, whatever a buggy or concurrent writer does.
CREATE UNIQUE INDEX participants_one_owner ON participants (conversation_id)
    WHERE role = 'owner';
