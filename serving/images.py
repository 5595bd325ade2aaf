"""Pictures from users, made safe before any engine sees them: the bytes of an ``image_url`` data URL
(or, when the server allows it, of a public http(s) URL), a Gradio upload, an Anthropic or Ollama
base64 block, decoded with Pillow into an ``ImageInput`` (RGB pixels and their digest).

The limits (``ImageLimits``, from the server settings): bytes per picture, pixels per picture (checked
from the header, before the pixels are decompressed: a decompression bomb is refused without being
expanded), pictures per request. A file Pillow cannot read, a format that is not a picture format, a
truncated file: InvalidRequest naming the parameter, so every entry point answers 400 and the server
goes on. Nothing is written to disk here.

Remote URLs (``--allow-remote-images``): http(s) only; the host is resolved once and every address
must be a public one (no loopback, private, link-local, reserved or multicast address: the server
is not a way into its own network); the connection goes to that checked address (the Host header
and TLS name stay the URL's, so DNS cannot answer differently the second time); no redirects; the
body is read up to the byte limit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from backends.base import ImageInput
from backends.errors import InvalidRequest

MAX_IMAGE_BYTES = 5 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGES = 8
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
REMOTE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    max_images: int = MAX_IMAGES
    allow_remote: bool = False


def decode_image(raw: bytes, param: str, limits: ImageLimits | None = None, field: str | None = None) -> ImageInput:
    """``raw`` (an encoded picture) checked and decoded to RGB, or InvalidRequest saying where (``param``,
    e.g. "messages[0].content[1].image_url") and naming the request field (``field``, default ``param``)."""
    from PIL import Image, UnidentifiedImageError

    limits = limits or ImageLimits()
    if not raw:
        raise InvalidRequest(f"{param}: the image is empty.", field or param)
    if len(raw) > limits.max_bytes:
        raise InvalidRequest(f"{param}: the image is {len(raw):,} bytes; this server accepts at most "
                             f"{limits.max_bytes:,} (--max-image-bytes).", field or param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
            w, h = img.size
            if w < 1 or h < 1 or w * h > limits.max_pixels:
                raise InvalidRequest(f"{param}: the image is {w}x{h} pixels ({w * h:,}); this server accepts at most "
                                     f"{limits.max_pixels:,} pixels (--max-image-pixels).", field or param)
            img.seek(0)  # an animation: its first frame
            img.load()
            rgb = _rgb(img)
    except InvalidRequest:
        raise
    except UnidentifiedImageError:
        raise InvalidRequest(f"{param}: not an image this server reads ({', '.join(FORMATS)}).", field or param) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(f"{param}: the image expands to too many pixels (a decompression bomb?).", field or param) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InvalidRequest(f"{param}: the image is damaged or truncated ({exc}).", field or param) from None
    data = rgb.tobytes()
    return ImageInput(data, rgb.width, rgb.height, hashlib.sha256(data).hexdigest())


def _rgb(img):
    """RGB pixels; transparency composed over white (what a viewer shows)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_base64(data: str, param: str, limits: ImageLimits | None = None, field: str | None = None) -> ImageInput:
    """A picture sent as base64 text (Anthropic's and Ollama's blocks, a data URL's payload)."""
    limits = limits or ImageLimits()
    if not isinstance(data, str):
        raise InvalidRequest(f"{param} must be base64 text.", field or param)
    data = "".join(data.split())
    if len(data) * 3 // 4 > limits.max_bytes + 3:  # refused before decoding
        raise InvalidRequest(f"{param}: the image is about {len(data) * 3 // 4:,} bytes; this server accepts at "
                             f"most {limits.max_bytes:,} (--max-image-bytes).", field or param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64.", field or param) from None
    return decode_image(raw, param, limits, field)


def image_from_url(url: str, param: str, limits: ImageLimits | None = None, field: str | None = None) -> ImageInput:
    """An OpenAI ``image_url.url``: a data URL, or (when the server allows it) a public http(s) URL."""
    limits = limits or ImageLimits()
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{param} must be a URL (a data: URL with the image).", field or param)
    m = _DATA_URL.match(url[:300])
    if m:
        if m.group("type") and not m.group("type").lower().startswith("image/"):
            raise InvalidRequest(f"{param}: a data URL of type {m.group('type')} is not an image.", field or param)
        if not m.group("b64"):
            raise InvalidRequest(f"{param}: the data URL must be base64 (data:image/png;base64,...).", field or param)
        return decode_base64(url[m.end():], param, limits, field)
    if url.lower().startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise InvalidRequest(f"{param}: image URLs are not supported by this server unless it allows fetching "
                                 "them (--allow-remote-images): send the picture as a data URL "
                                 "(data:image/png;base64,...).", field or param)
        return decode_image(fetch_public(url, param, limits.max_bytes, field), param, limits, field)
    raise InvalidRequest(f"{param} must be a data: URL (or an http(s) URL where the server allows it).", field or param)


def public_address(host: str, port: int, param: str, field: str | None = None) -> str:
    """The first address ``host`` resolves to, when every one is public; else InvalidRequest."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidRequest(f"{param}: cannot resolve {host!r}.", field or param) from None
    addrs = [info[4][0] for info in infos]
    for a in addrs:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise InvalidRequest(f"{param}: {host} is not a public address; images are fetched from the public "
                                 "internet only.", field or param)
    if not addrs:
        raise InvalidRequest(f"{param}: cannot resolve {host!r}.", field or param)
    return addrs[0]


def fetch_public(url: str, param: str, max_bytes: int, field: str | None = None) -> bytes:
    """The body at a public http(s) ``url`` (see the module docstring), at most ``max_bytes``."""
    import httpx

    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise InvalidRequest(f"{param} must be an http(s) URL without credentials.", field or param)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addr = public_address(host, port, field or param)
    shown = f"[{addr}]" if ":" in addr else addr
    target = parts._replace(netloc=f"{shown}:{port}").geturl()
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
    try:
        with httpx.Client(timeout=REMOTE_TIMEOUT_S, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", target, headers=headers, extensions={"sni_hostname": host}) as resp:
            if resp.status_code != 200:
                raise InvalidRequest(f"{param}: fetching the image answered HTTP {resp.status_code}.", field or param)
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise InvalidRequest(f"{param}: the image is over {max_bytes:,} bytes (--max-image-bytes).", field or param)
            return bytes(body)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{param}: could not fetch the image ({type(exc).__name__}).", field or param) from None


def check_count(n: int, limits: ImageLimits | None = None) -> None:
    limits = limits or ImageLimits()
    if n > limits.max_images:
        raise InvalidRequest(f"The request has {n} images; this server accepts at most {limits.max_images} "
                             "(--max-images).", "messages")
