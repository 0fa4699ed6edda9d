"""A backend (e.g. a Django app) talking to Indaba over gRPC.

Opens a conversation between a guest and a host, posts a system message ("Booking #N
confirmed") that both see live, reads the host's unread count, and shows how a bad request
comes back: INVALID_ARGUMENT with the offending field in google.rpc.BadRequest details.

Generate the stubs once (pip install grpcio grpcio-tools grpcio-status):

    python -m grpc_tools.protoc -I proto/proto --python_out=stubs --grpc_python_out=stubs \
        indaba/chat/v1/chat.proto
    PYTHONPATH=stubs INDABA_GRPC_TARGET=localhost:50051 INDABA_GRPC_API_KEY=... \
        python examples/python/booking_notice.py --guest 10 --host 20 --booking 1234
"""

import argparse
import json
import os

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from indaba.chat.v1 import chat_pb2, chat_pb2_grpc


def field_violations(err: grpc.RpcError) -> list:
    """The fields a rejected request was blamed for (rich error details)."""
    status = rpc_status.from_call(err)
    fields = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--guest", type=int, required=True)
    args.add_argument("--host", type=int, required=True)
    args.add_argument("--booking", required=True)
    a = args.parse_args()

    target = os.environ.get("INDABA_GRPC_TARGET", "localhost:50051")
    key = os.environ.get("INDABA_GRPC_API_KEY")
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(target) as channel:
        chat = chat_pb2_grpc.MessageServiceStub(channel)

        conv = chat.CreateConversation(
            chat_pb2.CreateConversationRequest(
                creator_id=a.guest,
                participant_ids=[a.host],
                title=f"Booking #{a.booking}",
                kind=chat_pb2.CONVERSATION_KIND_GROUP,
            ),
            metadata=metadata,
            timeout=5,
        ).conversation

        # sender_id 0 + as_system: a notice from the platform, not from a user. The
        # client_msg_id makes a retry (timeout, redeploy) safe: no second notice.
        sent = chat.SendMessage(
            chat_pb2.SendMessageRequest(
                sender_id=0,
                as_system=True,
                conversation_id=conv.id,
                text=f"Booking #{a.booking} confirmed",
                client_msg_id=f"booking-{a.booking}-confirmed",
            ),
            metadata=metadata,
            timeout=5,
        )

        unread = chat.GetUnreadCounts(
            chat_pb2.GetUnreadCountsRequest(user_id=a.host), metadata=metadata, timeout=5
        )

        try:
            chat.SendMessage(
                chat_pb2.SendMessageRequest(sender_id=0, as_system=True, conversation_id=conv.id, text=" "),
                metadata=metadata,
                timeout=5,
            )
            bad_field = None
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            bad_field = (field_violations(err) or [None])[0]

    print(
        json.dumps(
            {
                "conversation_id": conv.id,
                "message_id": sent.message.id,
                "duplicate": sent.duplicate,
                "host_unread": unread.total_unread,
                "invalid_argument_field": bad_field,
            }
        )
    )


if __name__ == "__main__":
    main()
