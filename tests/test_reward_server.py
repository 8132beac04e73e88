"""`editr1 serve-reward` as a real subprocess on loopback: the OpenAI-compatible answers, the
rejections (each followed by a healthy server), and concurrent clients."""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import threading
import zlib

import pytest
import torch
from PIL import Image
from reward_serving import INSTRUCTIONS, ServerProcess, random_images, save_test_judge

from editr1.cli.main import main
from editr1.data.images import tensor_to_image
from editr1.rewards.tiny_judge import build_tiny_judge
from editr1.serve.batcher import Batcher
from editr1.serve.protocol import decode_image_url

KEY = "test-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "serve.yaml"
    config.write_text(f"model: {save_test_judge(folder / 'judge')}\nport: 0\nserved_model_name: judge\n"
                      f"api_key_env: EDITR1_TEST_KEY\nmax_body_bytes: 1048576\nmax_image_pixels: 4096\n"
                      f"max_images_per_request: 2\n")
    process = ServerProcess(config, folder / "stderr.txt", env={"EDITR1_TEST_KEY": KEY})
    yield process
    assert process.stop() == 0 and process.count(r"^stopped$") == 1  # Ctrl-C stops it cleanly


def call(port: int, method: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


def send_headers_only(port: int, headers: dict) -> tuple[int, dict]:
    """A POST whose body is never sent: the server must answer from the headers alone."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in {"Authorization": f"Bearer {KEY}", **headers}.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


def data_url(png: bytes, media: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{base64.b64encode(png).decode()}"}}


def png_of(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    tensor_to_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few-dozen-byte PNG whose header claims width x height (a decompression bomb's signature)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data follows the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


IMAGES = random_images(2, seed=7)


def chat(parts: list[dict] | None = None, **fields) -> dict:
    parts = parts if parts is not None else [data_url(png_of(IMAGES[0])), data_url(png_of(IMAGES[1]))]
    body = {"model": "judge", "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "Rate 0 to 5."}]}],
            "max_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0.0}
    return {**body, **fields}


def encode(body: dict) -> bytes:
    return json.dumps(body).encode()


def test_health_models_and_a_chat_completion(server):
    assert call(server.port, "GET", "/health", key=None) == (200, {"status": "ok"})
    status, models = call(server.port, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["judge"]

    status, answer = call(server.port, "POST", "/v1/chat/completions", encode(chat()))
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["model"] == "judge"
    choice = answer["choices"][0]
    first = choice["logprobs"]["content"][0]
    top = first["top_logprobs"]
    assert len(top) == 20 and choice["finish_reason"] == "length"
    assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert choice["message"]["content"] == first["token"] == top[0]["token"]
    assert all(isinstance(t["token"], str) and bytes(t["bytes"]).decode() == t["token"] and t["logprob"] <= 0 for t in top)
    assert {str(level) for level in range(6)} <= {t["token"] for t in top}  # decoded text, not ids

    status, answer = call(server.port, "POST", "/v1/chat/completions", encode(chat(logprobs=False, top_logprobs=None)))
    assert status == 200 and answer["choices"][0]["logprobs"] is None

    # Sampled answers: n choices, the same ones again for the same seed.
    sampled = [call(server.port, "POST", "/v1/chat/completions", encode(chat(temperature=0.7, n=5, seed=11)))
               for _ in range(2)]
    assert all(status == 200 for status, _ in sampled)
    answers = [[choice["message"]["content"] for choice in body["choices"]] for _, body in sampled]
    assert len(answers[0]) == 5 and answers[0] == answers[1]


REJECTIONS = {
    "wrong token": (lambda port: call(port, "POST", "/v1/chat/completions", encode(chat()), key="wrong"), 401, "API key"),
    "no token": (lambda port: call(port, "GET", "/v1/models", key=None), 401, "API key"),
    "samples without a temperature": (lambda port: call(port, "POST", "/v1/chat/completions", encode(chat(n=3))), 400,
                                      "need a temperature above 0"),
    "oversized body": (lambda port: send_headers_only(port, {"Content-Length": str(10**9)}), 413, "max_body_bytes"),
    "no Content-Length": (lambda port: send_headers_only(port, {}), 411, "Content-Length"),
    "decompression bomb": (lambda port: call(port, "POST", "/v1/chat/completions",
                                             encode(chat([data_url(png_claiming(20000, 20000))]))), 413, "max_image_pixels"),
    "too many pixels": (lambda port: call(port, "POST", "/v1/chat/completions",
                                          encode(chat([data_url(png_claiming(5000, 5000))]))), 413,
                        "messages[0].content[0]: image is 5000x5000"),
    "http URL": (lambda port: call(port, "POST", "/v1/chat/completions",
                                   encode(chat([{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]))),
                 400, "only data: URLs"),
    "corrupt image": (lambda port: call(port, "POST", "/v1/chat/completions",
                                        encode(chat([data_url(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))]))), 400,
                      "not a readable image/png"),
    "invalid JSON": (lambda port: call(port, "POST", "/v1/chat/completions", b'{"model": "judge", '), 400, "invalid JSON"),
    "max_tokens 5": (lambda port: call(port, "POST", "/v1/chat/completions", encode(chat(max_tokens=5))), 400,
                     "max_tokens: must be 1"),
    "too many images": (lambda port: call(port, "POST", "/v1/chat/completions",
                                          encode(chat([data_url(png_of(IMAGES[0]))] * 3))), 400, "max_images_per_request"),
    "unknown model": (lambda port: call(port, "POST", "/v1/chat/completions", encode(chat(model="other"))), 404,
                      "serves 'judge'"),
    "top_logprobs 21": (lambda port: call(port, "POST", "/v1/chat/completions", encode(chat(top_logprobs=21))), 400,
                        "top_logprobs"),
    "body not an object": (lambda port: call(port, "POST", "/v1/chat/completions", b"[1, 2]"), 400, "JSON object"),
    "image the judge refuses": (lambda port: call(port, "POST", "/v1/chat/completions",
                                                  encode(chat([data_url(png_of(torch.rand(3, 1, 300)))]))), 500,
                                "aspect ratio"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_bad_requests_get_a_clear_error_and_the_server_stays_up(server, case):
    send, expected_status, fragment = REJECTIONS[case]
    status, payload = send(server.port)
    assert status == expected_status, payload
    assert fragment in payload["error"]["message"] and payload["error"]["code"] == expected_status
    assert call(server.port, "GET", "/health", key=None) == (200, {"status": "ok"})


def test_concurrent_clients_are_all_served(server):
    body = encode(chat())
    served_before = server.count(r"^POST /v1/chat/completions 200 ")
    errors, lock = [], threading.Lock()

    def client():
        for _ in range(5):
            try:
                status, payload = call(server.port, "POST", "/v1/chat/completions", body)
                assert status == 200 and payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"], payload
            except Exception as error:  # noqa: BLE001 - collected and reported below
                with lock:
                    errors.append(repr(error))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    server.wait_for(r"^POST /v1/chat/completions 200 \d", count=served_before + 80, timeout=10)


@pytest.mark.parametrize(("overrides", "message"), [
    (["port=70000"], "port: must be in 0..65535"),
    (["max_batch_size=0"], "max_batch_size: must be >= 1"),
    (["max_concurrent_requests=0"], "max_concurrent_requests: must be >= 1"),
    (["body_timeout_s=0"], "body_timeout_s: must be > 0"),
    (["api_key_env=EDITR1_TEST_UNSET_VARIABLE"], "api_key_env: environment variable 'EDITR1_TEST_UNSET_VARIABLE'"),
    (["model=''"], "model: required"),
])
def test_config_errors_name_the_field(overrides, message, capsys):
    assert main(["serve-reward", "--set", "model=some/judge", *[a for o in overrides for a in ("--set", o)]]) == 2
    assert message in capsys.readouterr().err


def test_an_exif_rotated_jpeg_is_decoded_upright():
    """A camera JPEG stores its pixels sideways with EXIF Orientation 6 (turn 90 degrees clockwise to view)."""
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image_url(data_url(buffer.getvalue(), "image/jpeg")["image_url"]["url"], "image", 10**6)
    assert image.size == (32, 64)  # upright: portrait
    red, blue = image.getpixel((16, 8)), image.getpixel((16, 56))  # the stored left edge is now the top
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60, (red, blue)


def test_the_batcher_fails_only_the_request_the_judge_refuses():
    batcher = Batcher(build_tiny_judge(INSTRUCTIONS), max_batch_size=8, max_wait_ms=500)
    images = [tensor_to_image(image) for image in random_images(4, seed=9)]
    good = [([{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}],
             [images[i], images[i + 1]]) for i, text in enumerate(["rate it", "score this edit now", INSTRUCTIONS[0]])]
    bad = (good[0][0], [Image.new("RGB", (300, 1)), images[0]])  # an aspect ratio Qwen2-VL's processor refuses
    futures = [batcher.submit(conversation, 5) for conversation in (good[0], bad, good[1], good[2])]  # one batch
    with pytest.raises(ValueError, match="aspect ratio"):
        futures[1].result()
    batched = [futures[i].result().top for i in (0, 2, 3)]
    alone = [batcher.submit(conversation, 5).result().top for conversation in good]
    for together, single in zip(batched, alone):  # left padding in a batch changes nothing
        assert [token for token, _ in together] == [token for token, _ in single] and len(single) == 5
        assert [lp for _, lp in together] == pytest.approx([lp for _, lp in single], abs=1e-5)
    batcher.close()
    assert not batcher.alive
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(good[0], 1)
