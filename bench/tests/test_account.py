"""Reading the tools' output in ``bench/account.py`` (texts as strace 6.1 and perf 6.18 print them)."""

from __future__ import annotations

import account

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 42.18    0.185639           6     26965           write
 11.40    0.050188           0     53939        31 read
  4.40    0.019373           0     26965           poll
------ ----------- ----------- --------- --------- ----------------
100.00    0.255200           3    107869        31 total
"""

PERF = """\
# Samples: 4K of event 'cpu-clock'
#
# Overhead  Shared Object
# ........  ......................................
#
    47.69%  libpython3.11.so.1.0
    40.03%  [kernel.kallsyms]
     4.72%  parser.cpython-311-x86_64-linux-gnu.so
"""


def test_strace_counts_each_call_and_leaves_the_total_out() -> None:
    assert account.parse_strace(STRACE) == {"write": 26965, "read": 53939, "poll": 26965}


def test_perf_shares_by_binary() -> None:
    assert account.parse_perf_shares(PERF) == {
        "libpython3.11.so.1.0": 47.69,
        "[kernel.kallsyms]": 40.03,
        "parser.cpython-311-x86_64-linux-gnu.so": 4.72,
    }


def test_core_times_reads_every_field_of_a_core() -> None:
    times = account.core_times("0")
    assert set(times) == {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}
    assert times["idle"] > 0
