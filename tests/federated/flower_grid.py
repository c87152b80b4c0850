"""A test double of Flower's ``Grid``: delivers each message to a ClientApp with that node's own
Context (node config ``partition-id``, its own ``state``), synchronously, in this process.

It only replaces the transport; each message's content is serialized to Flower's protobuf and
parsed back on the way (``recorddict_to_proto``/``recorddict_from_proto``, both directions), so
nothing but bytes reaches the client and nothing but bytes comes back. The real engines are tested in
``test_flower_engine.py``.
"""
from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity


def _wire(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


class LocalGrid:
    def __init__(self, client_app, num_nodes: int, *, first_node_id: int = 1000):
        self.client_app = client_app
        self.contexts = {first_node_id + 7 * i: Context(run_id=1, node_id=first_node_id + 7 * i,
                                                        node_config={"partition-id": i, "num-partitions": num_nodes},
                                                        state=RecordDict(), run_config={})
                         for i in range(num_nodes)}
        self.sent = 0
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def get_node_ids(self):
        return list(self.contexts)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent += 1
            delivered = Message(_wire(msg.content), msg.metadata.dst_node_id, msg.metadata.message_type,
                                group_id=msg.metadata.group_id)
            context = self.contexts[msg.metadata.dst_node_id]
            reply = self.client_app(delivered, context)
            back = Message(_wire(reply.content), reply_to=delivered) if not reply.has_error() else reply
            replies.append(back)
        return replies
