"""tritonclient's gRPC client shaped like its HTTP one, so one test runs over both protocols, and a plain GET of a
server's endpoint (tests/serve)."""
import http.client
import queue
import re

import tritonclient.grpc as triton_grpc
from google.protobuf import json_format


class GrpcClient(triton_grpc.InferenceServerClient):
    """tritonclient's gRPC client answering as the HTTP one does: metadata, config and index as the same JSON, and
    ``async_infer`` giving an object with ``get_result``."""

    def get_server_metadata(self):
        return message_json(super().get_server_metadata())

    def get_model_metadata(self, name):
        return message_json(super().get_model_metadata(name))

    def get_model_config(self, name):
        return message_json(super().get_model_config(name).config)

    def get_model_repository_index(self):
        return [message_json(m) for m in super().get_model_repository_index().models]

    def get_inference_statistics(self, name=""):
        return message_json(super().get_inference_statistics(name))

    def async_infer(self, model, inputs, **kwargs):
        answers: queue.Queue = queue.Queue()
        super().async_infer(model, inputs, lambda result, error: answers.put((result, error)), **kwargs)

        class Pending:
            @staticmethod
            def get_result(timeout=None):
                answer, error = answers.get(timeout=timeout)
                if error is not None:
                    raise error
                return answer

        return Pending()


def message_json(message) -> dict:
    """A protobuf message as the HTTP endpoints' JSON (int64 fields, which protobuf's JSON writes as strings, as
    numbers)."""
    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return int(value) if isinstance(value, str) and re.fullmatch(r"-?\d+", value) else value

    return numbers(json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True))


def get(server, path: str, timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` on a ``vaedeploy serve`` of the tests (``conftest.Server``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
