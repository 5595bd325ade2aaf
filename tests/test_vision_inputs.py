"""Pictures and files from users, before any model: decoding with Pillow under the limits (bytes,
pixels read from the header, count), data URLs, remote URLs only to public addresses, attachments
told apart (picture, text, PDF) and turned into context blocks. Fast: no model."""

from __future__ import annotations

import base64

import pytest

from backends.base import ChatRequest, Message
from backends.errors import InvalidRequest
from serving.attachments import Attachment, context_block, kind_of, split
from serving.images import ImageLimits, decode_base64, decode_image, image_from_url, public_address
from serving.requests import RequestLimits, build_request
from tests.vision_model import bomb_png, data_url, png


def test_a_picture_is_decoded_to_rgb_with_a_digest():
    a, b = decode_image(png((255, 0, 0)), "x"), decode_image(png((255, 0, 0)), "x")
    assert (a.width, a.height, len(a.rgb)) == (32, 32, 32 * 32 * 3) and a.rgb[:3] == b"\xff\x00\x00"
    assert a.digest == b.digest != decode_image(png((0, 0, 255)), "x").digest


def test_transparency_is_composed_over_white():
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "x").rgb[:3] == b"\xff\xff\xff"


@pytest.mark.parametrize("raw, words", [
    (b"", "empty"),
    (b"GIF89a" + b"\x00" * 20, "image"),
    (b"%PDF-1.4 not a picture", "not an image"),
    (png(seed=3, size=64)[:200], "damaged"),
    (bomb_png(), "pixels"),
])
def test_bad_pictures_are_refused_by_name(raw, words):
    with pytest.raises(InvalidRequest) as err:
        decode_image(raw, "messages[0]", ImageLimits(max_pixels=512 * 512), field="messages")
    assert words in str(err.value) and err.value.param == "messages"


def test_the_byte_limit_is_checked_before_decoding():
    with pytest.raises(InvalidRequest, match="at most 100"):
        decode_base64(base64.b64encode(png(seed=1)).decode(), "x", ImageLimits(max_bytes=100))


def test_data_urls_and_what_is_not_one():
    assert decode_image(png(), "x").digest == image_from_url(data_url(png()), "x").digest
    for url, words in (("data:text/plain;base64,aGk=", "not an image"), ("data:image/png,abc", "base64"),
                       ("data:image/png;base64,@@@", "not valid base64"), ("ftp://x/y.png", "data: URL"),
                       ("https://example.com/a.png", "not supported")):
        with pytest.raises(InvalidRequest, match=words):
            image_from_url(url, "x")


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "[::1]", "localhost",
                                  "0.0.0.0", "[::ffff:127.0.0.1]", "[fd00::1]"])
def test_remote_pictures_never_come_from_private_addresses(host):
    with pytest.raises(InvalidRequest, match="not a public address|cannot resolve"):
        public_address(host.strip("[]"), 80, "x")
    with pytest.raises(InvalidRequest, match="not a public address|cannot resolve"):
        image_from_url(f"http://{host}/a.png", "x", ImageLimits(allow_remote=True))


def test_attachments_become_pictures_and_named_context_blocks():
    blocks, images = split([Attachment("notes.md", b"# Hi\nthere"), Attachment("a.png", png()),
                            Attachment("data.csv", b"a,b\n1,2\n")])
    assert blocks == context_block("notes.md", "# Hi\nthere") + "\n\n" + context_block("data.csv", "a,b\n1,2")
    assert len(images) == 1
    request = build_request("Sum b.", [], "", 8, 0, 1, 0, 1, 0, files=[Attachment("data.csv", b"a,b\n1,2\n")])
    assert request.messages[-1].content == '<file name="data.csv">\na,b\n1,2\n</file>\n\nSum b.'


@pytest.mark.parametrize("att, words", [
    (Attachment("tool.exe", b"MZ"), "cannot be attached"),
    (Attachment("x.txt", b"a\x00b"), "binary"),
    (Attachment("big.txt", b"x" * (5 * 2**20 + 1)), "at most"),
    (Attachment("x.pdf", b"%PDF-1.4 broken"), "PDF"),
])
def test_files_that_cannot_be_context_are_refused(att, words):
    with pytest.raises(InvalidRequest, match=words):
        split([att])


def text_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (Helvetica), written by hand: objects, then the xref table."""
    stream = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_a_pdf_is_sent_as_its_text():
    pypdf = pytest.importorskip("pypdf")
    from io import BytesIO

    blocks, _ = split([Attachment("report.pdf", text_pdf("The secret word is heliotrope."))])
    assert blocks.startswith('<file name="report.pdf">') and "heliotrope" in blocks
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    buf = BytesIO()
    writer.write(buf)
    with pytest.raises(InvalidRequest, match="no text"):  # a page without text (a scan)
        split([Attachment("scan.pdf", buf.getvalue())])


def test_too_many_pictures_and_a_picture_only_message():
    limits = RequestLimits(images=ImageLimits(max_images=1))
    with pytest.raises(InvalidRequest, match="at most 1"):
        build_request("x", [], "", 8, 0, 1, 0, 1, 0, limits=limits, files=[Attachment("a.png", png())] * 2)
    request = build_request("", [], "", 8, 0, 1, 0, 1, 0, files=[Attachment("a.png", png())])
    assert request.images and request.messages[-1].content == ""
    with pytest.raises(InvalidRequest, match="empty"):
        ChatRequest((Message("user", " "),))


def test_kinds():
    assert [kind_of(n) for n in ("a.PNG", "b.md", "Makefile", "c.pdf", "d.py")] == ["image", "text", "text", "pdf",
                                                                                       "text"]
