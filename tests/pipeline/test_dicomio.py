"""read_radiograph: the grey-level chain, every transfer syntax, and the error cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from pipeline.dicomio import (
    CorruptImage,
    UnsupportedImage,
    read_radiograph,
)
from tests.dicom_factory import make_dataset, ramp, roundtrip
from train.phantoms.encoding import TRANSFER_SYNTAXES, write_instance

LOSSLESS = [name for name, spec in TRANSFER_SYNTAXES.items() if not spec.lossy]
LOSSY = [name for name, spec in TRANSFER_SYNTAXES.items() if spec.lossy]


def _bits_for(syntax: str) -> int:
    return {"jpeg_baseline": 8, "jpeg_extended": 12}.get(syntax, 12)


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntaxes_decode_to_identical_pixels(syntax: str, tmp_path: Path) -> None:
    stored = ramp(bits=_bits_for(syntax))
    ds = make_dataset(stored, bits_stored=_bits_for(syntax), WindowCenter=1500, WindowWidth=2000)
    path = tmp_path / "x.dcm"
    write_instance(ds, stored, syntax, path)

    written = pydicom.dcmread(path)
    assert written.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax].uid
    np.testing.assert_array_equal(written.pixel_array, stored)
    reference = read_radiograph(
        make_dataset(stored, bits_stored=12, WindowCenter=1500, WindowWidth=2000)
    )
    np.testing.assert_array_equal(read_radiograph(path).pixels, reference.pixels)


@pytest.mark.parametrize("syntax", LOSSY)
def test_lossy_syntaxes_decode_close_to_the_original(syntax: str, tmp_path: Path) -> None:
    bits = _bits_for(syntax)
    stored = ramp(bits=bits)
    ds = make_dataset(stored, bits_stored=bits)
    path = tmp_path / "x.dcm"
    write_instance(ds, stored, syntax, path)

    written = pydicom.dcmread(path)
    assert written.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax].uid
    assert written.LossyImageCompression == "01"
    decoded = read_radiograph(path).pixels
    expected = read_radiograph(make_dataset(stored, bits_stored=bits)).pixels
    assert np.abs(decoded - expected).mean() < 0.02


def test_display_space_is_float32_in_unit_range_with_metadata() -> None:
    stored = ramp()
    ds = make_dataset(
        stored,
        bits_stored=12,
        ViewPosition="PA",
        Laterality="L",
        ImagerPixelSpacing=[0.15, 0.15],
        Manufacturer="Acme",
    )
    image = read_radiograph(ds)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == stored.shape
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert (image.rows, image.columns) == stored.shape
    assert image.sop_instance_uid == ds.SOPInstanceUID
    assert image.study_instance_uid == "1.2.3.4"
    assert image.body_part_examined == "WRIST"
    assert image.view_position == "PA" and image.laterality == "L"
    assert image.pixel_spacing == (0.15, 0.15)
    assert image.manufacturer == "Acme"
    assert image.voi_source == "percentile"


def test_pixel_spacing_prefers_pixel_spacing_over_imager_spacing() -> None:
    ds = make_dataset(ramp(), PixelSpacing=[0.1, 0.2], ImagerPixelSpacing=[0.3, 0.3])
    assert read_radiograph(ds).pixel_spacing == (0.1, 0.2)


def test_monochrome1_is_inverted_so_bone_is_bright() -> None:
    stored = ramp()
    mono2 = read_radiograph(
        make_dataset(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    )
    mono1 = read_radiograph(
        make_dataset(
            stored, bits_stored=12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096
        )
    )
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    disc = stored == stored.max()
    assert mono2.pixels[disc].mean() > 0.9 and mono1.pixels[disc].mean() < 0.1


def test_linear_window_follows_ps3_3_formula() -> None:
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    pixels = read_radiograph(
        make_dataset(stored, bits_stored=12, WindowCenter=2000, WindowWidth=1001)
    ).pixels.ravel()
    # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 1
    assert pixels[1499] == 0.0 and pixels[1500] < 0.002
    assert pixels[2500] == 1.0
    x = np.arange(4096, dtype=np.float64)
    expected = np.clip((x - 1999.5) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_linear_exact_and_sigmoid_windows() -> None:
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    x = np.arange(4096, dtype=np.float64)
    exact = read_radiograph(
        make_dataset(
            stored,
            bits_stored=12,
            WindowCenter=1000,
            WindowWidth=500,
            VOILUTFunction="LINEAR_EXACT",
        )
    ).pixels.ravel()
    np.testing.assert_allclose(exact, np.clip((x - 1000) / 500 + 0.5, 0, 1), atol=1e-6)
    sigmoid = read_radiograph(
        make_dataset(
            stored, bits_stored=12, WindowCenter=1000, WindowWidth=500, VOILUTFunction="SIGMOID"
        )
    ).pixels.ravel()
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-4 * (x - 1000) / 500)), atol=1e-6)
    assert sigmoid[1000] == pytest.approx(0.5)


def test_multi_valued_window_uses_the_first() -> None:
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    ds = make_dataset(stored, bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[101, 11])
    pixels = read_radiograph(ds).pixels.ravel()
    assert pixels[940] == 0.0 and pixels[1060] == 1.0 and 0.2 < pixels[1000] < 0.8


def test_voi_lut_sequence_is_applied() -> None:
    stored = np.arange(0, 1024, dtype=np.uint16).reshape(32, 32)
    item = Dataset()
    item.LUTDescriptor = [256, 100, 8]
    item.LUTData = list(range(255, -1, -1))  # a descending LUT: easy to recognise
    item["LUTData"].VR = "US"
    ds = make_dataset(stored, bits_stored=10, VOILUTSequence=[item])
    image = read_radiograph(ds)
    assert image.voi_source == "voi_lut_sequence"
    pixels = image.pixels.ravel()
    assert pixels[0] == 1.0  # below the first mapped value: the first entry
    assert pixels[100] == 1.0 and pixels[355] == 0.0 and pixels[1000] == 0.0
    assert pixels[228] == pytest.approx((255 - 128) / 255, abs=1e-6)


def test_rescale_slope_and_intercept_precede_the_window() -> None:
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    # Window in modality units: stored 1000 -> 2 * 1000 - 1024 = 976.
    ds = make_dataset(
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=976.5,
        WindowWidth=2,
    )
    pixels = read_radiograph(ds).pixels.ravel()
    assert pixels[999] == 0.0 and pixels[1001] == 1.0


def test_modality_lut_sequence_is_applied() -> None:
    stored = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [4000 - 10 * v for v in range(256)]  # a LUT that reverses the order
    item["LUTData"].VR = "US"
    ds = make_dataset(stored, ModalityLUTSequence=[item], WindowCenter=2725, WindowWidth=2551)
    pixels = read_radiograph(ds).pixels.ravel()
    assert pixels[0] > 0.99 and pixels[255] < 0.01


def test_signed_pixels_are_read_as_signed() -> None:
    stored = (ramp(bits=12).astype(np.int16) - 2048).astype(np.int16)
    ds = make_dataset(stored, bits_stored=12, WindowCenter=0, WindowWidth=4096)
    pixels = read_radiograph(ds).pixels
    assert pixels[:, 0].max() < 0.05  # -2048 is black, not a huge unsigned value
    assert pixels[stored == stored.max()].min() > 0.9


def test_bits_above_bits_stored_are_ignored() -> None:
    stored = ramp(bits=12)
    dirty = stored | np.uint16(0xF000)  # overlay bits set above BitsStored
    clean = read_radiograph(make_dataset(stored, bits_stored=12)).pixels
    np.testing.assert_array_equal(
        read_radiograph(make_dataset(dirty, bits_stored=12)).pixels, clean
    )


def test_percentile_window_when_no_voi() -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(1000, 3001, size=(100, 100)).astype(np.uint16)
    pixels = read_radiograph(make_dataset(stored, bits_stored=12)).pixels
    assert (pixels == 0.0).mean() == pytest.approx(0.005, abs=0.003)
    assert (pixels == 1.0).mean() == pytest.approx(0.005, abs=0.003)
    assert 0.4 < pixels.mean() < 0.6


def test_rgb_secondary_capture_becomes_luminance() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    rgb[4:, :, :] = 255
    ds = make_dataset(rgb, sop_class=uid.SecondaryCaptureImageStorage, photometric="RGB")
    pixels = read_radiograph(ds).pixels
    assert pixels.shape == (8, 8)
    assert pixels[0, 0] == pytest.approx(0.299, abs=1e-3)
    assert pixels[7, 7] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "sop_class",
    [
        uid.DigitalXRayImageStorageForPresentation,
        uid.DigitalXRayImageStorageForProcessing,
        uid.SecondaryCaptureImageStorage,
    ],
)
def test_every_supported_sop_class_reads(sop_class: str) -> None:
    image = read_radiograph(make_dataset(ramp(bits=8), sop_class=sop_class))
    assert image.sop_class_uid == sop_class


# -- errors: each says what is wrong with which instance ------------------------------------------


def _assert_names_instance(exc: pytest.ExceptionInfo[Exception], ds: Dataset) -> None:
    assert ds.SOPInstanceUID in str(exc.value)


def test_other_sop_class_is_unsupported() -> None:
    ds = make_dataset(ramp(), sop_class=uid.MRImageStorage)
    with pytest.raises(UnsupportedImage, match="MR Image Storage") as exc:
        read_radiograph(ds)
    _assert_names_instance(exc, ds)


def test_multi_frame_is_unsupported() -> None:
    frames = np.concatenate([ramp(), ramp()])
    ds = make_dataset(frames, NumberOfFrames=2)
    ds.Rows = 48
    with pytest.raises(UnsupportedImage, match="multi-frame") as exc:
        read_radiograph(roundtrip(ds))
    _assert_names_instance(exc, ds)


def test_missing_pixel_data_is_corrupt() -> None:
    ds = make_dataset(ramp())
    del ds.PixelData
    with pytest.raises(CorruptImage, match="no Pixel Data") as exc:
        read_radiograph(roundtrip(ds))
    _assert_names_instance(exc, ds)


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    ds = make_dataset(ramp())
    path = tmp_path / "t.dcm"
    ds.save_as(path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(CorruptImage, match="truncated") as exc:
        read_radiograph(path)
    _assert_names_instance(exc, ds)
    assert str(path) in str(exc.value)


def test_rows_columns_that_do_not_match_the_data_are_corrupt() -> None:
    ds = make_dataset(ramp())
    ds.Rows = 24
    with pytest.raises(CorruptImage, match="do not match") as exc:
        read_radiograph(roundtrip(ds))
    _assert_names_instance(exc, ds)


def test_absurd_size_is_refused_before_decoding() -> None:
    ds = make_dataset(ramp())
    ds.Rows, ds.Columns = 40_000, 40_000  # would need 3.2 GB
    with pytest.raises(UnsupportedImage, match="10000 px limit") as exc:
        read_radiograph(roundtrip(ds))
    _assert_names_instance(exc, ds)


def test_disagreeing_bit_depths_are_corrupt() -> None:
    ds = make_dataset(ramp(), bits_stored=12)
    ds.HighBit = 15
    with pytest.raises(CorruptImage, match="disagree"):
        read_radiograph(roundtrip(ds))


def test_palette_colour_is_unsupported() -> None:
    ds = make_dataset(
        ramp(bits=8), photometric="PALETTE COLOR", sop_class=uid.SecondaryCaptureImageStorage
    )
    with pytest.raises(UnsupportedImage, match="PALETTE COLOR"):
        read_radiograph(ds)


def test_undecodable_compressed_data_is_corrupt(tmp_path: Path) -> None:
    stored = ramp()
    path = tmp_path / "j.dcm"
    write_instance(make_dataset(stored, bits_stored=12), stored, "j2k_lossless", path)
    ds = pydicom.dcmread(path)
    fragments = bytearray(ds.PixelData)
    fragments[40:] = bytes(len(fragments) - 40)  # keep the item tags, zero the codestream
    ds.PixelData = bytes(fragments)
    with pytest.raises(CorruptImage, match="cannot be decoded"):
        read_radiograph(ds)


def test_a_file_that_is_not_dicom_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("not an image")
    with pytest.raises(CorruptImage, match="not a DICOM file"):
        read_radiograph(path)


def test_a_broken_header_is_corrupt(tmp_path: Path) -> None:
    ds = make_dataset(ramp())
    path = tmp_path / "h.dcm"
    ds.save_as(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID, explicit VR LE
    data[start + 6 : start + 8] = b"\xff\xff"  # its length now runs off the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImage):
        read_radiograph(path)


def test_every_syntax_the_archive_writes_is_declared_readable() -> None:
    from pipeline.dicom.uids import READABLE_TRANSFER_SYNTAXES

    assert {spec.uid for spec in TRANSFER_SYNTAXES.values()} == set(READABLE_TRANSFER_SYNTAXES)
