"""Images: every kind of file a real folder holds goes through ``crop_classifier.data.images.read_rgb``."""
import json
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from crop_classifier.data.images import MAX_PIXELS, read_rgb
from crop_classifier.errors import ImageNotFoundError, ImageReadError
from robustness_helpers import constant_png, encode, pil_bytes, smooth_rgb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check_rgb(a: np.ndarray, shape):
    assert a.dtype == np.uint8 and a.shape == shape
    assert a.flags.c_contiguous and a.flags.writeable


# --------------------------------------------------------------------------- colour formats


def test_png_is_exact_rgb(write):
    img = smooth_rgb()
    a = read_rgb(write("a.png", encode(img, ".png")))
    _check_rgb(a, img.shape)
    assert np.array_equal(a, img)  # lossless: channel order RGB, not OpenCV's BGR


def test_grayscale_becomes_three_equal_channels(write):
    gray = smooth_rgb()[:, :, 0]
    a = read_rgb(write("g.png", encode(gray, ".png")))
    _check_rgb(a, gray.shape + (3,))
    for c in range(3):
        assert np.array_equal(a[:, :, c], gray)


def test_rgba_drops_alpha(write):
    img = smooth_rgb()
    alpha = np.full(img.shape[:2], 77, np.uint8)
    a = read_rgb(write("a.png", encode(np.dstack([img, alpha]), ".png")))
    _check_rgb(a, img.shape)
    assert np.array_equal(a, img)


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_scaled_to_8bit(write, channels):
    img = smooth_rgb()
    src = img if channels == 3 else img[:, :, 0]
    a = read_rgb(write("deep.png", encode(src.astype(np.uint16) * 257, ".png")))  # 0..255 -> 0..65535
    _check_rgb(a, img.shape)
    want = img if channels == 3 else np.repeat(src[:, :, None], 3, axis=2)
    assert np.array_equal(a, want)


def test_palette_and_gray_alpha_png(write):
    img = smooth_rgb()
    for mode in ("P", "LA"):
        a = read_rgb(write(f"{mode}.png", pil_bytes(Image.fromarray(img).convert(mode), "PNG")))
        ref = np.asarray(Image.fromarray(img).convert(mode).convert("RGB"))
        _check_rgb(a, img.shape)
        assert np.abs(a.astype(int) - ref).max() <= 1, mode


def test_cmyk_jpeg_converted_to_rgb(write):
    img = smooth_rgb()
    data = pil_bytes(Image.fromarray(img).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(write("probe.jpg", data)).mode == "CMYK"
    a = read_rgb(write("cmyk.jpg", data))
    _check_rgb(a, img.shape)
    assert np.abs(a.astype(float) - img).mean() < 4  # JPEG loss only; inverted/unconverted CMYK is ~100+


def test_gif_decoded_by_the_fallback(write):
    img = smooth_rgb()
    a = read_rgb(write("a.gif", pil_bytes(Image.fromarray(img).convert("P"), "GIF")))
    ref = np.asarray(Image.fromarray(img).convert("P").convert("RGB"))
    _check_rgb(a, img.shape)
    assert np.abs(a.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("orientation,k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(write, orientation, k):
    img = smooth_rgb()
    exif = Image.Exif()
    exif[0x0112] = orientation
    a = read_rgb(write("r.jpg", pil_bytes(Image.fromarray(img), "JPEG", quality=95, exif=exif.tobytes())))
    want = np.rot90(img, k)  # what a viewer shows
    _check_rgb(a, want.shape)
    assert np.abs(a.astype(float) - want).mean() < 4
    wrong = img if k == 2 else np.rot90(img, -k)  # not rotated / rotated the other way
    assert np.abs(a.astype(float) - wrong).mean() > 20


def test_one_pixel_image(write):
    a = read_rgb(write("1.png", encode(np.array([[[10, 200, 30]]], np.uint8), ".png")))
    _check_rgb(a, (1, 1, 3))
    assert a[0, 0].tolist() == [10, 200, 30]


# --------------------------------------------------------------------------- bad files


def _reason(path) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)  # the error names the file
    return err


def test_zero_byte_file(write):
    assert "empty file" in _reason(write("empty.jpg", b"")).reason


@pytest.mark.parametrize("name,data", [("notes.jpg", b"shopping list\n" * 20), ("noise.png", bytes(range(256)) * 8),
                                       ("page.png", b"<html><body>404 not found</body></html>")])
def test_non_image_with_image_extension(write, name, data):
    assert "not an image" in _reason(write(name, data)).reason


def test_truncated_jpeg(write):
    data = encode(smooth_rgb(96, 128), ".jpg", IMWRITE_JPEG_QUALITY=95)
    assert read_rgb(write("whole.jpg", data)).shape == (96, 128, 3)
    # OpenCV 4 returns a grey-filled picture for this one (caught by the end-of-image check), OpenCV 5 refuses
    # it and Pillow then names it; refused either way, and said why.
    reason = _reason(write("cut.jpg", data[: len(data) * 2 // 3])).reason
    assert "truncated" in reason and "JPEG" in reason, reason
    assert _reason(write("cut_header.jpg", data[:200]))  # cut inside the header


def test_truncated_jpeg_with_exif_thumbnail(write):
    """An EXIF thumbnail carries its own end-of-image marker; it must not hide a cut-off main image."""
    data = encode(smooth_rgb(96, 128), ".jpg")
    thumb = encode(smooth_rgb(8, 8), ".jpg")
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_thumb = data[:2] + app1 + data[2:]
    assert read_rgb(write("thumb.jpg", with_thumb)).shape == (96, 128, 3)
    assert "truncated" in _reason(write("thumb_cut.jpg", with_thumb[: len(with_thumb) - 300])).reason


def test_jpeg_with_trailing_bytes_is_good(write):
    data = encode(smooth_rgb(), ".jpg")
    a = read_rgb(write("junk.jpg", data + b"\x00" * 64 + b"camera maker notes"))
    assert np.array_equal(a, read_rgb(write("clean.jpg", data)))


def test_truncated_png(write):
    data = encode(smooth_rgb(96, 128), ".png")
    assert "truncated" in _reason(write("cut.png", data[: len(data) // 2])).reason


def test_missing_path_and_folder(tmp_path):
    err = _reason(tmp_path / "nope.jpg")
    assert isinstance(err, ImageNotFoundError) and isinstance(err, FileNotFoundError)
    assert "no such file" in err.reason
    (tmp_path / "dir.jpg").mkdir()
    assert "folder" in _reason(tmp_path / "dir.jpg").reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(write):
    p = write("secret.png", encode(smooth_rgb(), ".png"))
    os.chmod(p, 0)
    assert "permission denied" in _reason(p).reason


def test_error_survives_pickling(write):
    """DataLoader workers send exceptions to the main process by pickling them."""
    import pickle

    err = _reason(write("empty.png", b""))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ImageReadError and back.path == err.path and back.reason == err.reason


# --------------------------------------------------------------------------- size limit


def test_pixel_limit_checked_before_decoding(write, monkeypatch):
    """A header claiming 40000x40000 (a decompression bomb) is refused from the header: no 4.8 GB decode."""
    bomb = write("bomb.png", constant_png(40000, 40000, idat=False))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _reason(bomb)
    assert "too large" in err.reason and "1,600,000,000 pixels" in err.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing was decoded
    # A smaller limit, by argument or environment.
    small = write("small.png", encode(smooth_rgb(48, 64), ".png"))
    with pytest.raises(ImageReadError, match="64x48 = 3,072 pixels, over the limit of 3,000"):
        read_rgb(small, max_pixels=3000)
    monkeypatch.setenv("CROP_CLASSIFIER_MAX_PIXELS", "3000")
    with pytest.raises(ImageReadError, match="over the limit of 3,000"):
        read_rgb(small)
    assert read_rgb(small, max_pixels=0).shape == (48, 64, 3)  # 0: no limit


def test_12000x9000_image_decodes_with_bounded_memory(tmp_path):
    """108 MP (under MAX_PIXELS) is read and cropped; peak memory stays ~2x the 309 MiB result.

    Run in a fresh process so its peak RSS measures this read alone.
    """
    assert 12000 * 9000 <= MAX_PIXELS
    path = tmp_path / "huge.png"
    path.write_bytes(constant_png(12000, 9000))  # ~0.3 MB on disk
    code = textwrap.dedent(f"""
        import json, resource, torch
        from crop_classifier.data.images import read_rgb
        from crop_classifier.crops import extract_crops
        rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r0 = rss()
        a = read_rgb({str(path)!r})
        peak = rss() - r0
        crops = extract_crops(a, torch.tensor([[0., 0., 50., 50.], [11900., 8900., 12000., 9000.]]), 32)
        print(json.dumps({{"shape": a.shape, "nbytes": a.nbytes, "peak": peak, "max": int(a.max()),
                          "crops": tuple(crops.shape)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["shape"] == [9000, 12000, 3] and r["max"] == 0 and r["crops"] == [2, 3, 32, 32]
    assert r["peak"] < 2.3 * r["nbytes"], f"peak {r['peak'] / 2**20:.0f} MiB for a {r['nbytes'] / 2**20:.0f} MiB image"
