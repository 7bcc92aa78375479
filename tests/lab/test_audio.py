"""usbwire's emulated headset used by the kernel's snd-usb-audio through usbip attach:
the guest records the microphone and plays to the speaker with ALSA's own tools."""

from __future__ import annotations

import re
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audio import measure, trim_silence
from tests.conftest import RunningServer, start_server, wait_until
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.uac import Headset, ToneSource, WavSink

from . import usbdevices
from .scenarios import KernelClient, kernel_client
from .session import Lab
from .test_passthrough import start_usbwire
from .usbdevices import QEMU_AUDIO_ID
from .vm import VM

pytestmark = pytest.mark.lab

HEADSET = "1-6"
HEADSET_ID = (0x1209, 0x0007)
MIC_TONE = 1250  # 48 samples (one packet) are 1.25 periods: a lost packet always shows as a jump
SPEAKER_TONE = 440
RATE = 48000


@pytest.fixture
def headset_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    speaker = tmp_path / "speaker.wav"
    headset = Headset(mic=ToneSource(MIC_TONE), speaker=WavSink(speaker))
    yield from ((server, speaker) for server in start_server(extra_exports=[EmulatedExport(headset, HEADSET)]))


def usb_dmesg(vm: VM) -> str:
    """The guest kernel's USB and sound lines, for a failure message."""
    lines = vm.run("dmesg").out.splitlines()
    return "\n--- guest dmesg (usb, snd) ---\n" + "\n".join(
        line for line in lines[-400:] if re.search(r"usb|snd|vhci", line, re.I) and "Not yet implemented" not in line
    )


def sound_card(client: KernelClient) -> int:
    """The ALSA card snd-usb-audio made of the headset."""
    found: list[int] = []

    def listed() -> bool:
        cards = client.vm.run("cat /proc/asound/cards").out
        found[:] = [int(n) for n in re.findall(r"^\s*(\d+) \[.*\n.*Emulated headset", cards, re.MULTILINE)]
        return bool(found)

    wait_until(listed, "snd-usb-audio to register the headset", timeout_s=30)
    return found[0]


def test_the_guest_records_the_microphone_tone_unbroken_and_in_real_time(
    lab: Lab, headset_server: tuple[RunningServer, Path]
) -> None:
    server, _ = headset_server
    with kernel_client(lab) as client:
        client.attach(server.port, HEADSET, wait_for=HEADSET_ID)
        card = sound_card(client)
        recording = client.vm.paths.scratch / "mic.wav"
        # -v shows the buffer and period ALSA granted: a read fails with EIO when no period of
        # sound arrives within 1.1 buffers, here 1.1 s.
        result = client.vm.chroot_run(
            f"date +%s.%N; arecord -v -D plughw:{card},0 -f S16_LE -c 2 -r {RATE} -d 10 --buffer-time=1000000 "
            f"{recording}; status=$?; date +%s.%N; exit $status",
            60,
        )
        assert result.ok, result.describe() + usb_dmesg(client.vm)
        started, ended = (float(line) for line in result.out.split())
        assert "overrun" not in result.err, result.describe()
        with wave.open(str(recording), "rb") as wav:  # the scratch share goes with the VM
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 2, 2)
            pcm = wav.readframes(wav.getnframes())
    tone = measure(pcm, RATE)
    assert tone.seconds == pytest.approx(10, abs=0.01)
    assert tone.frequency == pytest.approx(MIC_TONE, rel=0.002)
    assert tone.peak == pytest.approx(0.5 * 32767, rel=0.02)
    assert tone.continuous(RATE), f"the recording jumps by {tone.largest_step}: packets were lost or repeated"
    # Paced like a real microphone: ten seconds of sound take (at least) ten seconds to arrive;
    # more when the emulated guest is too slow to keep its URBs queued.
    assert 9.8 <= ended - started < 30, ended - started


def test_what_the_guest_plays_to_the_speaker_lands_in_the_server_side_wav(
    lab: Lab, headset_server: tuple[RunningServer, Path]
) -> None:
    server, speaker = headset_server
    with kernel_client(lab) as client:
        played = client.vm.paths.scratch / "tone.wav"
        with wave.open(str(played), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(ToneSource(SPEAKER_TONE, 0.25).read(3 * RATE, RATE))
        client.attach(server.port, HEADSET, wait_for=HEADSET_ID)
        card = sound_card(client)
        result = client.vm.chroot_run(f"aplay -D plughw:{card},0 {played}", 60)
        assert result.ok, result.describe() + usb_dmesg(client.vm)
        assert "underrun" not in result.err, result.describe()
        dmesg = client.vm.run("dmesg").out
    # The stream stops after aplay (alternate setting 0), which completes the file.
    wait_until(lambda: speaker.exists() and speaker.stat().st_size > 2.9 * RATE * 4, "the speaker's WAV file")
    with wave.open(str(speaker), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 2, 2)
        pcm = wav.readframes(wav.getnframes())
    tone = measure(trim_silence(pcm), RATE)
    assert tone.frequency == pytest.approx(SPEAKER_TONE, rel=0.002)
    assert tone.seconds == pytest.approx(3.0, abs=0.02)
    assert tone.peak == pytest.approx(0.25 * 32767, rel=0.02)
    assert tone.continuous(RATE)
    assert "usb_submit_urb" not in dmesg and "cannot submit urb" not in dmesg, dmesg


def test_qemus_usb_speaker_passed_through_with_libusb_plays_what_the_importer_sends(lab: Lab, tmp_path: Path) -> None:
    """The guest shares QEMU's usb-audio with ``usbwire serve --backend libusb`` and imports it
    back through its own vhci-hcd; aplay to the imported card reaches QEMU's speaker."""
    heard = tmp_path / "qemu-speaker.wav"
    with lab.vm(usb=[usbdevices.audio(wav=heard, id="speaker")], cpus=2) as vm:
        busid = vm.wait_for_usb(*QEMU_AUDIO_ID)
        server = start_usbwire(vm, "libusb", QEMU_AUDIO_ID)
        played = vm.paths.scratch / "tone.wav"
        with wave.open(str(played), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(ToneSource(1000, 0.25).read(2 * RATE, RATE))
        vm.chroot_run(f"usbip attach -r 127.0.0.1 -b {busid}", 60, check=True)
        found: list[int] = []

        def imported_card() -> bool:
            cards = vm.run("cat /proc/asound/cards").out
            found[:] = [int(n) for n in re.findall(r"^\s*(\d+) \[.*\n.*at usb-vhci_hcd", cards, re.MULTILINE)]
            return bool(found)

        wait_until(imported_card, "snd-usb-audio to bind the imported speaker", timeout_s=30)
        result = vm.chroot_run(f"aplay -D plughw:{found[0]},0 {played}", 60)
        log = (vm.paths.commands / f"{server.id}.err").read_text(errors="replace")
        assert result.ok, result.describe() + usb_dmesg(vm) + log[-3000:]
        errors = [
            line
            for line in vm.run("dmesg").out.splitlines()
            if re.search(r"usb|snd|vhci|xhci", line, re.I) and re.search(r"error|cannot|fail", line, re.I)
        ]
        assert not errors, "\n".join(errors)
        assert "failed" not in log, log
    with wave.open(str(heard), "rb") as recording:
        rate = recording.getframerate()
        pcm = recording.readframes(recording.getnframes())
    tone = measure(trim_silence(pcm), rate)
    assert tone.frequency == pytest.approx(1000, rel=0.01)
    assert tone.seconds > 1.5, tone
