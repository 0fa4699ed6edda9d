# Generates gateway/openapi.json (the REST API document served at /api/v1/openapi.json).
# Edit here, run `python3 gateway/tools/openapi.py`, commit both; the test suite checks the
# document against the router and runs schemathesis against it.
import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def err(desc): return {"description": desc, "content": {"application/json": {"schema": ref("Error")}}}
def ok(desc, schema): return {"description": desc, "content": {"application/json": {"schema": schema}}}
E = {
 "400": err("Invalid request (`invalid_json`, `invalid_field`, `empty_text`, `text_too_long`, `invalid_receiver`, …)"),
 "401": err("Missing, invalid or expired token (`unauthorized`)"),
 "403": err("Not a participant, or the group's rules do not allow it (`forbidden`)"),
 "404": err("Not found (`not_found`, `conversation_not_found`, `message_not_found`)"),
 "405": err("Method not allowed"),
 "413": err("Body larger than 64 KiB (`payload_too_large`)"),
 "429": err("Rate limited (`rate_limited`); retry later with the same idempotency key"),
 "503": err("A backing service is unavailable (`unavailable`); retry"),
 "500": err("Internal error"),
 "502": err("Bad reply from a backing service"),
}
def errs(*codes): return {c: E[c] for c in codes}
common = ("400","401","403","404","405","413","429","503","500","502")
idp = {"name":"id","in":"path","required":True,"schema":{"type":"integer","format":"int64","minimum":1}}
Id = {"oneOf":[{"type":"integer","format":"int64","minimum":1},{"type":"string","pattern":"^[1-9][0-9]{0,17}$"}],"description":"An id, as a number or a string of digits"}
msg = {"type":"object","required":["message_id","conversation_id","sender_id","text","seq","created_at"],"properties":{
  "message_id":{"type":"integer","format":"int64"},"conversation_id":{"type":"integer","format":"int64"},
  "sender_id":{"type":"integer","format":"int64","description":"0 for system messages"},"receiver_id":{"type":"integer","format":"int64"},
  "text":{"type":"string"},"seq":{"type":"integer","format":"int64"},"created_at":{"type":"string","format":"date-time"},
  "client_msg_id":{"type":"string"}}}
conv = {"type":"object","required":["id","kind","title","participant_ids","last_seq","created_by","created_at"],"properties":{
  "id":{"type":"integer","format":"int64"},"kind":{"type":"string","enum":["direct","group"]},"title":{"type":"string"},
  "participant_ids":{"type":"array","items":{"type":"integer","format":"int64"}},"last_seq":{"type":"integer","format":"int64"},
  "owner_id":{"type":"integer","format":"int64","description":"The group's owner; absent for direct conversations (no roles) and ownerless groups"},
  "admin_ids":{"type":"array","items":{"type":"integer","format":"int64"},"description":"The group's admins (never the owner)"},
  "created_by":{"type":"integer","format":"int64"},"created_at":{"type":"string","format":"date-time"}}}
summary = {"type":"object","required":["id","kind","title","participant_ids","last_seq","last_read_seq","unread_count"],"properties":{
  "id":{"type":"integer","format":"int64"},"kind":{"type":"string","enum":["direct","group"]},"title":{"type":"string"},
  "participant_ids":{"type":"array","items":{"type":"integer","format":"int64"}},"last_seq":{"type":"integer","format":"int64"},
  "owner_id":{"type":"integer","format":"int64"},"admin_ids":{"type":"array","items":{"type":"integer","format":"int64"}},
  "last_read_seq":{"type":"integer","format":"int64"},"unread_count":{"type":"integer","format":"int64","maximum":1000},
  "last_message":{"oneOf":[ref("Message"),{"type":"null"}]}}}
sent = {"type":"object","required":["message_id","conversation_id","seq","created_at"],"properties":{
  "message_id":{"type":"integer","format":"int64"},"conversation_id":{"type":"integer","format":"int64"},"seq":{"type":"integer","format":"int64"},
  "client_msg_id":{"type":"string"},"created_at":{"type":"string","format":"date-time"},"duplicate":{"type":"boolean"}}}
error = {"type":"object","required":["error"],"properties":{"error":{"type":"object","required":["code","message"],"properties":{
  "code":{"type":"string","description":"Stable machine-readable code"},"message":{"type":"string"}}}}}
presence = {"type":"object","required":["user_id","status","last_seen"],"properties":{"user_id":{"type":"integer","format":"int64"},
  "status":{"type":"string","enum":["online","away","offline"]},"last_seen":{"oneOf":[{"type":"string","format":"date-time"},{"type":"null"}]}}}
send_body = {"type":"object","required":["text"],"additionalProperties":False,"properties":{
  "text":{"type":"string","minLength":1,"maxLength":4000},"client_msg_id":{"nullable":True,"oneOf":[{"type":"string","minLength":1,"maxLength":64,"pattern":"^[!-~]+$"},{"type":"integer","minimum":0}]},
  "receiver_id":{**Id,"nullable":True}}}
idem = {"name":"Idempotency-Key","in":"header","required":False,"schema":{"type":"string","minLength":1,"maxLength":64,"pattern":"^[!-~]+$"},
  "description":"Makes the send idempotent (same as `client_msg_id`; the header wins)."}
device = {"type":"object","required":["id","platform","token","created_at"],"properties":{"id":{"type":"integer","format":"int64"},
  "platform":{"type":"string","enum":["fcm","apns","webpush","webhook"]},"token":{"type":"string"},"created_at":{"type":"string","format":"date-time"}}}
device_body = {"type":"object","required":["platform"],"additionalProperties":False,"properties":{
  "platform":{"type":"string","enum":["fcm","apns","webpush","webhook"]},
  "token":{"type":"string","minLength":1,"maxLength":4096,"description":"FCM/APNs token or webhook URL"},
  "endpoint":{"type":"string","minLength":1,"maxLength":4096,"description":"Web Push: the subscription's endpoint (PushSubscription.toJSON())"},
  "keys":{"type":"object","required":["p256dh","auth"],"additionalProperties":False,"properties":{"p256dh":{"type":"string"},"auth":{"type":"string"}}},
  "expirationTime":{"nullable":True}}}
json_body = lambda schema: {"required":True,"content":{"application/json":{"schema":schema}}}
doc = {
 "openapi":"3.0.3",
 "info":{"title":"Indaba REST API","version":"1.0.0","description":"REST fallback and event stream of the Indaba chat backend. Every request needs `Authorization: Bearer <JWT>` (the event stream also accepts `?token=`). Errors are `{\"error\":{\"code\":…,\"message\":…}}` with stable codes."},
 "servers":[{"url":"/"}],
 "security":[{"bearerAuth":[]}],
 "paths":{
  "/api/v1/conversations/":{
   "get":{"operationId":"listConversations","summary":"Your conversations, most recently active first","parameters":[
      {"name":"page_size","in":"query","schema":{"type":"integer","minimum":1,"maximum":500}},
      {"name":"page_token","in":"query","schema":{"type":"string"}}],
      "responses":{"200":ok("A page",{"type":"object","required":["conversations"],"properties":{"conversations":{"type":"array","items":ref("ConversationSummary")},"next_page_token":{"type":"string"}}}),**errs(*common)}},
   "post":{"operationId":"createConversation","summary":"Create a conversation (returns the existing direct one of a pair with 200)",
      "requestBody":json_body({"type":"object","required":["participant_ids"],"additionalProperties":False,"properties":{
        "participant_ids":{"type":"array","minItems":1,"items":Id},"title":{"type":"string","maxLength":200,"nullable":True},"kind":{"type":"string","enum":["direct","group",None],"nullable":True}}}),
      "responses":{"200":ok("The existing direct conversation",ref("Conversation")),"201":ok("Created",ref("Conversation")),**errs(*common)}}},
  "/api/v1/conversations/{id}/":{"get":{"operationId":"getConversation","parameters":[idp],
      "responses":{"200":ok("The conversation",ref("Conversation")),**errs(*common)}}},
  "/api/v1/conversations/{id}/participants/":{"post":{"operationId":"updateParticipants","summary":"Add or remove group members","parameters":[idp],
      "requestBody":json_body({"type":"object","additionalProperties":False,"properties":{"add":{"type":"array","items":Id},"remove":{"type":"array","items":Id}}}),
      "responses":{"200":ok("The updated group",ref("Conversation")),**errs(*common)}}},
  "/api/v1/conversations/{id}/participants/{user_id}/":{"put":{"operationId":"setParticipantRole","summary":"Appoint or demote an admin, or transfer ownership (role owner: the old owner becomes an admin); owner only","parameters":[idp,
      {"name":"user_id","in":"path","required":True,"schema":{"type":"integer","format":"int64","minimum":1}}],
      "requestBody":json_body({"type":"object","required":["role"],"additionalProperties":False,"properties":{"role":{"type":"string","enum":["member","admin","owner"]}}}),
      "responses":{"200":ok("The group with its new roles",ref("Conversation")),**errs(*common)}}},
  "/api/v1/conversations/{id}/leave/":{"post":{"operationId":"leaveGroup","summary":"Leave a group (the owner must transfer ownership first: 403 forbidden)","parameters":[idp],
      "responses":{"200":ok("The group without you",ref("Conversation")),**errs(*common)}}},
  "/api/v1/conversations/{id}/messages/":{
   "get":{"operationId":"listMessages","summary":"A page of messages, oldest first: the newest page, or after/before a seq","parameters":[idp,
      {"name":"after_seq","in":"query","schema":{"type":"integer","format":"int64","minimum":0}},
      {"name":"before_seq","in":"query","schema":{"type":"integer","format":"int64","minimum":1}},
      {"name":"limit","in":"query","schema":{"type":"integer","minimum":1,"maximum":200}}],
      "responses":{"200":ok("A page",{"type":"object","required":["messages","has_more"],"properties":{"messages":{"type":"array","items":ref("Message")},"has_more":{"type":"boolean"}}}),**errs(*common)}},
   "post":{"operationId":"sendMessage","summary":"Send a message; delivered live to WebSocket and event-stream recipients","parameters":[idp,idem],
      "requestBody":json_body(ref("SendBody")),
      "responses":{"200":ok("A retry: the original message",ref("Sent")),"201":ok("Stored",ref("Sent")),**errs(*common)}}},
  "/api/v1/conversations/{id}/typing/":{"post":{"operationId":"sendTyping","parameters":[idp],
      "requestBody":{"required":False,"content":{"application/json":{"schema":{"type":"object","additionalProperties":False,"properties":{"is_typing":{"type":"boolean"}}}}}},
      "responses":{"204":{"description":"Relayed"},**errs(*common)}}},
  "/api/v1/messages/":{"post":{"operationId":"sendDirectMessage","summary":"Send to the direct conversation with receiver_id (created on first use)","parameters":[idem],
      "requestBody":json_body(ref("SendBody")),
      "responses":{"200":ok("A retry: the original message",ref("Sent")),"201":ok("Stored",ref("Sent")),**errs(*common)}}},
  "/api/v1/messages/{id}/":{"get":{"operationId":"getMessage","parameters":[idp],
      "responses":{"200":ok("The message",ref("Message")),**errs(*common)}}},
  "/api/v1/messages/unread/":{"get":{"operationId":"unreadCounts","summary":"Unread counts (what the spec's client polls)",
      "responses":{"200":ok("Counts",{"type":"object","required":["total_unread","conversations"],"properties":{"total_unread":{"type":"integer","format":"int64"},
        "conversations":{"type":"array","items":{"type":"object","required":["conversation_id","unread_count","last_read_seq","last_seq"],"properties":{
          "conversation_id":{"type":"integer","format":"int64"},"unread_count":{"type":"integer","format":"int64"},"last_read_seq":{"type":"integer","format":"int64"},"last_seq":{"type":"integer","format":"int64"}}}}}}),**errs(*common)}}},
  "/api/v1/messages/read/":{"post":{"operationId":"markRead","summary":"Mark messages read; senders get read receipts",
      "requestBody":json_body({"type":"object","required":["message_ids"],"additionalProperties":False,"properties":{"message_ids":{"type":"array","minItems":1,"maxItems":500,"items":Id}}}),
      "responses":{"200":ok("Marked",{"type":"object","required":["read","rejected","read_at"],"properties":{"read":{"type":"array","items":{"type":"integer","format":"int64"}},
        "rejected":{"type":"array","items":{"type":"integer","format":"int64"},"description":"Ids that do not exist or are not yours to read"},"read_at":{"type":"string","format":"date-time"}}}),**errs(*common)}}},
  "/api/v1/presence/":{"get":{"operationId":"getPresence","parameters":[{"name":"user_ids","in":"query","required":True,"description":"Comma-separated user ids (1-500)","schema":{"type":"string","pattern":"^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17}){0,499}$"}}],
      "responses":{"200":ok("Statuses",{"type":"object","required":["presence"],"properties":{"presence":{"type":"array","items":ref("Presence")}}}),**errs(*common)}}},
  "/api/v1/devices/":{
   "get":{"operationId":"listDevices","summary":"Your push devices","responses":{"200":ok("Devices",{"type":"object","required":["devices"],"properties":{"devices":{"type":"array","items":ref("Device")}}}),**errs(*common)}},
   "post":{"operationId":"registerDevice","summary":"Register a push device (FCM/APNs token, Web Push subscription, webhook URL)","requestBody":json_body(ref("DeviceBody")),
      "responses":{"201":ok("Registered",ref("Device")),**errs(*common)}},
   "delete":{"operationId":"unregisterDevice","requestBody":json_body(ref("DeviceBody")),"responses":{"204":{"description":"Forgotten"},**errs(*common)}}},
  "/api/v1/conversations/{id}/mute/":{
   "post":{"operationId":"muteConversation","summary":"No notifications for this conversation (until a time, or until unmuted); with level mentions_only (the default), messages mentioning you still notify","parameters":[idp],
      "requestBody":{"required":False,"content":{"application/json":{"schema":{"type":"object","additionalProperties":False,"properties":{"until_ms":{"type":"integer","format":"int64","minimum":1,"nullable":True},
        "level":{"type":"string","enum":["all","mentions_only",None],"nullable":True,"description":"all: nothing notifies; mentions_only (default): only messages mentioning you notify"}}}}}},
      "responses":{"204":{"description":"Muted"},**errs(*common)}},
   "delete":{"operationId":"unmuteConversation","parameters":[idp],"responses":{"204":{"description":"Unmuted"},**errs(*common)}}},
  "/api/v1/push/preferences/":{"put":{"operationId":"setPushPreferences","summary":"hide_text: notifications say \"New message\" without the text",
      "requestBody":json_body({"type":"object","required":["hide_text"],"additionalProperties":False,"properties":{"hide_text":{"type":"boolean"}}}),
      "responses":{"204":{"description":"Saved"},**errs(*common)}}},
  "/api/v1/events/":{"get":{"operationId":"events","summary":"Server-Sent Events: the WebSocket's server frames as `data:` JSON; `new_message` events carry `id:`. Resume with `Last-Event-ID`.",
      "parameters":[{"name":"token","in":"query","schema":{"type":"string"},"description":"JWT (EventSource cannot set headers)"},
        {"name":"last_event_id","in":"query","schema":{"type":"string","pattern":"^[0-9]+$"}},
        {"name":"Last-Event-ID","in":"header","schema":{"type":"string","pattern":"^[0-9]+$"}}],
      "x-schemathesis-skip":True,
      "responses":{"200":{"description":"An endless event stream","content":{"text/event-stream":{"schema":{"type":"string"}}}},**errs("400","401","503","500")}}},
  "/api/v1/dev/token/":{"get":{"operationId":"devToken","summary":"Development tokens (only with INDABA_DEV_TOKENS=true; 404 otherwise)","security":[],
      "parameters":[{"name":"user_id","in":"query","required":True,"schema":{"type":"integer","format":"int64","minimum":1}}],
      "responses":{"200":ok("A token",{"type":"object","required":["token","user_id"],"properties":{"token":{"type":"string"},"user_id":{"type":"integer","format":"int64"}}}),**errs("400","404","405","500")}}},
  "/api/v1/openapi.json":{"get":{"operationId":"openapi","security":[],"responses":{"200":{"description":"This document","content":{"application/json":{"schema":{"type":"object"}}}}}}}
 },
 "components":{
  "securitySchemes":{"bearerAuth":{"type":"http","scheme":"bearer","bearerFormat":"JWT"}},
  "schemas":{"Error":error,"Message":msg,"Conversation":conv,"ConversationSummary":summary,"Sent":sent,"Presence":presence,"SendBody":send_body,"Device":device,"DeviceBody":device_body}}
}
# Rich messages: the message's new fields, the change events, and their operations.
import copy
I64 = {"type":"integer","format":"int64"}
def nul(x): return {**x, "nullable": True}
S = doc["components"]["schemas"]
S["Message"]["properties"].update({
 "reply_to": nul({**I64, "description":"The thread root this replies to (null: not a reply)"}),
 "mentions": {"type":"array","items":I64},
 "edited_at": nul({"type":"string","format":"date-time"}),
 "deleted": {"type":"boolean","description":"Deleted for everyone: a tombstone with empty text"},
 "deleted_at": nul({"type":"string","format":"date-time"}),
 "deleted_by": nul(I64),
 "reactions": {"type":"object","description":"Emoji → how many reacted and whether you did","additionalProperties":{"type":"object","required":["count","me"],"properties":{"count":I64,"me":{"type":"boolean"}}}},
 "reply_count": I64,
 "last_reply_at": nul({"type":"string","format":"date-time"}),
 "pinned_at": nul({"type":"string","format":"date-time"}),
 "pinned_by": nul(I64),
})
S["ConversationSummary"]["properties"]["unread_mentions"] = {**I64, "description":"Unread messages that mention you"}
S["SendBody"]["properties"]["reply_to"] = nul(dict(Id, description="Reply in this message's thread (same conversation)"))
S["SendBody"]["properties"]["mentions"] = {"type":"array","maxItems":50,"items":Id,"description":"Participants to mention"}
S["Change"] = {"type":"object","required":["type","message_id","conversation_id","seq"],
 "description":"A change to a message, as every member receives it (`message_updated`, `message_deleted`, `reaction_added`, `reaction_removed`, `message_pinned`, `message_unpinned`); `seq` is its place in the conversation's stream",
 "properties":{"type":{"type":"string","enum":["message_updated","message_deleted","reaction_added","reaction_removed","message_pinned","message_unpinned"]},
   "message_id":I64,"conversation_id":I64,"seq":I64,"text":{"type":"string"},"edited_at":{"type":"string","format":"date-time"},
   "user_id":I64,"deleted_at":{"type":"string","format":"date-time"},"deleted_by":I64,"emoji":{"type":"string"},"count":I64,"at":{"type":"string","format":"date-time"}}}
S["EditBody"] = {"type":"object","required":["text"],"additionalProperties":False,"properties":{"text":{"type":"string","minLength":1,"maxLength":4000}}}
S["ReactionBody"] = {"type":"object","required":["emoji"],"additionalProperties":False,"properties":{"emoji":{"type":"string","minLength":1,"maxLength":32,"description":"One emoji, or a :short_code: of at most 32 bytes"}}}
lm = doc["paths"]["/api/v1/conversations/{id}/messages/"]["get"]
sch = lm["responses"]["200"]["content"]["application/json"]["schema"]
sch["properties"]["changes"] = {"type":"array","items":ref("Change"),"description":"Forward pages (after_seq): changes to earlier messages within the page's range, in order"}
sch["properties"]["end_seq"] = {**I64, "description":"Forward pages: the seq this page covers up to (the next after_seq)"}
lm["summary"] += "; forward pages (after_seq) also carry changes"
base = doc["paths"]["/api/v1/messages/{id}/"]["get"]
std = {k: v for k, v in base["responses"].items() if k != "200"}
conflict = err("The message's state refuses it (`edit_window_expired`, `too_many_reactions`)")
gone = err("The message was deleted (`message_deleted`)")
def op(opid, summary, ok_desc, ok_schema, body=None, params=None, change=True):
    o = {"operationId":opid,"summary":summary,"parameters":[base["parameters"][0]]+(params or []),
         "responses":{"200":ok(ok_desc, ok_schema)}}
    o["responses"].update(copy.deepcopy(std))
    if change:
        o["responses"]["409"] = conflict; o["responses"]["410"] = gone
    if body:
        o["requestBody"] = {"required":True,"content":{"application/json":{"schema":ref(body)}}}
    return o
ch = ref("Change")
msgs = {"type":"array","items":ref("Message")}
P = doc["paths"]
P["/api/v1/messages/{id}/"]["patch"] = op("editMessage","Edit your message's text (within INDABA_EDIT_WINDOW_SECS)","The `message_updated` event",ch,"EditBody")
P["/api/v1/messages/{id}/"]["delete"] = op("deleteMessage","Delete a message for everyone (its sender, or a group's owner or admin)","The `message_deleted` event",ch)
emojiq = {"name":"emoji","in":"query","schema":{"type":"string","minLength":1,"maxLength":32},"description":"Instead of the body"}
P["/api/v1/messages/{id}/reactions/"] = {
 "post":op("addReaction","React to a message (one of each emoji per user, at most 20 distinct)","The `reaction_added` event",ch,"ReactionBody"),
 "delete":op("removeReaction","Take your reaction back","The `reaction_removed` event",ch,None,[emojiq])}
P["/api/v1/messages/{id}/pin/"] = {
 "post":op("pinMessage","Pin a message (direct chats: either member; groups: owner and admins)","The `message_pinned` event",ch),
 "delete":op("unpinMessage","Unpin a message","The `message_unpinned` event",ch)}
P["/api/v1/messages/{id}/thread/"] = {"get":op("getThread","A thread page: its root (when after_seq is below it) and replies, oldest first","A thread page",
 {"type":"object","required":["message_id","conversation_id","messages","has_more"],"properties":{"message_id":I64,"conversation_id":I64,"messages":msgs,"has_more":{"type":"boolean"}}},None,
 [{"name":"after_seq","in":"query","schema":{"type":"integer","format":"int64","minimum":0}},{"name":"limit","in":"query","schema":{"type":"integer","minimum":1,"maximum":200}}],change=False)}
P["/api/v1/messages/{id}/reads/"] = {"get":op("getMessageReads","Who read a message and when (\"seen by\"; members only)","Readers, earliest first",
 {"type":"object","required":["message_id","conversation_id","reads"],"properties":{"message_id":I64,"conversation_id":I64,"reads":{"type":"array","items":{"type":"object","required":["user_id","read_at"],"properties":{"user_id":I64,"read_at":{"type":"string","format":"date-time"}}}}}},change=False)}
P["/api/v1/conversations/{id}/pins/"] = {"get":op("listPins","A conversation's pinned messages, most recently pinned first","Pinned messages",
 {"type":"object","required":["conversation_id","messages"],"properties":{"conversation_id":I64,"messages":msgs}},change=False)}

# Attachments: presigned uploads, attachments on sends and messages, members-only downloads.
S["SendBody"]["required"] = []
S["SendBody"]["properties"]["text"]["minLength"] = 0
S["SendBody"]["properties"]["text"]["description"] = "The text; may be empty or left out when the message has attachments"
S["SendBody"]["properties"]["attachments"] = {"type":"array","maxItems":10,"items":copy.deepcopy(Id),"description":"Upload ids from POST /api/v1/uploads/ (each yours, for this conversation, complete and unused)"}
S["Attachment"] = {"type":"object","required":["id","filename","content_type","size","url"],"properties":{
 "id":I64,"filename":{"type":"string"},
 "content_type":{"type":"string","description":"What the bytes were found to be; application/octet-stream for anything served as a download"},
 "size":I64,"width":{"type":"integer"},"height":{"type":"integer"},"duration_ms":I64,
 "url":{"type":"string","description":"GET (members only): a redirect to a short-lived address of the bytes"},
 "thumbnail":{"type":"string","description":"GET (images): a redirect to a JPEG of at most 320 px"},
 "waveform":{"type":"array","maxItems":100,"items":{"type":"integer","minimum":0,"maximum":255}}}}
S["Message"]["properties"]["attachments"] = {"type":"array","items":ref("Attachment")}
S["UploadBody"] = {"type":"object","additionalProperties":False,"required":["conversation_id","filename","content_type","size"],"properties":{
 "conversation_id":copy.deepcopy(Id),
 "filename":{"type":"string","maxLength":1024,"description":"Sanitised: the last path component, no control characters"},
 "content_type":{"type":"string","maxLength":100,"description":"Checked against the bytes' magic number for images, audio, video and PDF"},
 "size":{**I64,"minimum":1,"description":"Exactly the bytes that will be sent (at most INDABA_MAX_UPLOAD_BYTES)"},
 "waveform":{"type":"array","maxItems":100,"items":{"type":"integer","minimum":0,"maximum":255}}}}
upload_ok = {"type":"object","required":["upload_id","url","method","headers","expires_at"],"properties":{
 "upload_id":I64,
 "url":{"type":"string","description":"Where to send the bytes: the object storage (S3), or this gateway's /api/v1/blobs/ path (local storage; resolve it against the gateway's address)"},
 "method":{"type":"string","enum":["PUT"]},
 "headers":{"type":"object","additionalProperties":{"type":"string"},"description":"Headers the upload must carry exactly (they are signed)"},
 "expires_at":{"type":"string","format":"date-time"}}}
up = {"operationId":"createUpload","summary":"A presigned upload of one file to one conversation; attach it with `attachments` on a send",
 "requestBody":json_body(ref("UploadBody")),"responses":{"201":ok("A presigned upload",upload_ok),**errs(*common)}}
up["responses"]["404"] = err("Not a participant of the conversation, or no such conversation (`conversation_not_found`)")
up["responses"]["413"] = err("Declared size over the limit, or body larger than 64 KiB (`payload_too_large`)")
up["responses"]["415"] = err("Type not on the allowed list (`unsupported_media_type`)")
up["responses"]["429"] = err("Rate limited (`rate_limited`) or the daily upload allowance is spent (`quota_exceeded`)")
P["/api/v1/uploads/"] = {"post":up}
def download(opid, summary):
    r = {k: copy.deepcopy(v) for k, v in errs(*common).items() if k != "413"}
    r["302"] = {"description":"Redirect to a short-lived address of the bytes (`Content-Disposition` with the file name, `X-Content-Type-Options: nosniff`)","headers":{"Location":{"schema":{"type":"string"}}}}
    r["404"] = err("No such attachment, not a member of its conversation, or its message was deleted (`not_found`)")
    r["200"] = ok("The short-lived address (with `redirect=false`)",{"type":"object","required":["url","expires_at"],"properties":{"url":{"type":"string"},"expires_at":{"type":"string","format":"date-time"}}})
    return {"get":{"operationId":opid,"summary":summary,"parameters":[copy.deepcopy(idp),
      {"name":"redirect","in":"query","required":False,"schema":{"type":"string","enum":["true","false"]},"description":"false: answer 200 with the address as JSON instead of redirecting"}],
      "responses":r}}
P["/api/v1/attachments/{id}/"] = download("getAttachment","An attachment's bytes (members only)")
P["/api/v1/attachments/{id}/thumbnail/"] = download("getAttachmentThumbnail","An image attachment's thumbnail, a JPEG of at most 320 px (members only)")

import os
json.dump(doc, open(os.path.join(os.path.dirname(__file__), '..', 'openapi.json'), 'w'), indent=1)
print("paths", len(doc["paths"]))
