"""Counters behind /healthz and /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    bytes_in: int = 0  # stdin bytes written to PTYs
    bytes_out: int = 0  # output bytes read from PTYs
    sessions_started: int = 0
    protocol_errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    responses: Counter[str] = field(default_factory=Counter)  # "2xx".."5xx" -> count

    def count_response(self, status: int) -> None:
        # By class, not code: a bounded label set whatever a client asks for.
        self.responses[f"{status // 100}xx"] += 1

    def render(self, *, sessions: int, clients: int, version: str, max_sessions: int) -> str:
        lines = [
            "# HELP mixvllm_terminal_info Server version.",
            "# TYPE mixvllm_terminal_info gauge",
            f'mixvllm_terminal_info{{version="{version}"}} 1',
            "# HELP mixvllm_terminal_sessions Open terminal sessions.",
            "# TYPE mixvllm_terminal_sessions gauge",
            f"mixvllm_terminal_sessions {sessions}",
            "# HELP mixvllm_terminal_max_sessions Sessions at most (--max-sessions).",
            "# TYPE mixvllm_terminal_max_sessions gauge",
            f"mixvllm_terminal_max_sessions {max_sessions}",
            "# HELP mixvllm_terminal_clients Attached WebSocket clients.",
            "# TYPE mixvllm_terminal_clients gauge",
            f"mixvllm_terminal_clients {clients}",
            "# HELP mixvllm_terminal_sessions_started_total Sessions started.",
            "# TYPE mixvllm_terminal_sessions_started_total counter",
            f"mixvllm_terminal_sessions_started_total {self.sessions_started}",
            "# HELP mixvllm_terminal_bytes_in_total Bytes typed into sessions.",
            "# TYPE mixvllm_terminal_bytes_in_total counter",
            f"mixvllm_terminal_bytes_in_total {self.bytes_in}",
            "# HELP mixvllm_terminal_bytes_out_total Bytes of output read from sessions.",
            "# TYPE mixvllm_terminal_bytes_out_total counter",
            f"mixvllm_terminal_bytes_out_total {self.bytes_out}",
            "# HELP mixvllm_terminal_errors_total Connections closed for protocol errors.",
            "# TYPE mixvllm_terminal_errors_total counter",
            f"mixvllm_terminal_errors_total {self.protocol_errors}",
            "# HELP mixvllm_terminal_rejected_total Requests refused, by reason.",
            "# TYPE mixvllm_terminal_rejected_total counter",
        ]
        for reason in sorted(self.rejected) or ["token"]:
            lines.append(
                f'mixvllm_terminal_rejected_total{{reason="{reason}"}} {self.rejected[reason]}'
            )
        lines += [
            "# HELP mixvllm_terminal_http_responses_total HTTP responses, by status class.",
            "# TYPE mixvllm_terminal_http_responses_total counter",
        ]
        for code in ("2xx", "3xx", "4xx", "5xx"):
            lines.append(
                f'mixvllm_terminal_http_responses_total{{code="{code}"}} {self.responses[code]}'
            )
        return "\n".join(lines) + "\n"
