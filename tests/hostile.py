"""Terminal control sequences a hostile model, tool or server may send (the escape tests).

PAYLOAD holds no space, slash or line break: it fits in a tool's name and a file's name."""

from __future__ import annotations

SEQUENCES = {
    "OSC 52 (clipboard)": "\x1b]52;c;ZWNobyBvd25lZA==\x07",
    "OSC 0 (title)": "\x1b]0;owned\x07",
    "OSC 2 (title)": "\x1b]2;owned\x1b\\",
    "CSI 2J (clear)": "\x1b[2J",
    "DCS": "\x1bPq#0;2;0;0;0\x1b\\",
    "8-bit CSI": "\x9b2J",
    "8-bit OSC": "\x9d0;owned\x9c",
    "OSC 7337 (a forged copy button)": "\x1b]7337;code;cm0gLXJmIH4K\x07",
    "OSC 7337 (a forged download link)": "\x1b]7337;download;AAAAAAAAAAAAAAAAAAAAAAAA;eA==\x07",
    "BEL, BS, DEL": "\x07\x08\x7f",
}
PAYLOAD = "".join(SEQUENCES.values())
