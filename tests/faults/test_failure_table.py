"""docs/reliability.md's failure table, row by row: ROWS below names, for each row, the
tests that make that fault happen (real kernels: namespaces, iptables on their `lo`, prlimit,
a tmpfs, a DNS server of ours on a namespace's loopback) and check what the row says. Most
live beside this file in tests/faults/, one module per subject. A row without an entry
here, or an entry naming a test that is gone, fails `test_every_row_has_its_tests`.
"""

from __future__ import annotations

import ast

from helpers import ROOT

CHECK = "faults/test_check_path.py"
HTTP = "faults/test_daemon_http.py"
RESOURCES = "faults/test_daemon_resources.py"
HOSTILE = "faults/test_hostile.py"
OUTPUT = "faults/test_output_stalls.py"
DAEMON = "daemon/test_daemon.py"
METRICS = "daemon/test_metrics.py"
SERVING = "daemon/test_serving.py"
NATIVE = "engine/test_native.py"

# docs/reliability.md's failure table: the first cell of each row -> {file under tests/: tests}.
ROWS: dict[str, dict[str, tuple[str, ...]]] = {
    "SYN dropped (`iptables -j DROP`)": {
        CHECK: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
            "test_json_timeout_has_local_port",
            "test_json_retries_after_timeout",
            "test_dropped_syns_with_retries_are_each_recorded",
        ),
    },
    "`REJECT --reject-with icmp-host-unreachable`": {
        CHECK: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
        ),
    },
    "`REJECT --reject-with icmp-net-unreachable`": {
        CHECK: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
        ),
    },
    "`REJECT --reject-with tcp-reset`, or nothing listening": {
        CHECK: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
            "test_json_refused_has_local_port",
        ),
        DAEMON: ("test_refused_records_have_a_local_port",),
    },
    "`REJECT --reject-with icmp-proto-unreachable`": {
        CHECK: ("test_icmp_protocol_unreachable_is_an_error_of_the_target",),
    },
    "a link-local address with its zone (`[fe80::1%v0]:22`, `%3`)": {
        "test_zones.py": (
            "test_check_connects_on_the_zones_interface",
            "test_without_a_zone_the_link_local_address_fails",
            "test_an_unknown_interface_is_a_usage_error_naming_it",
            "test_the_daemon_and_probe_connect_on_the_zone",
            "test_a_loopback_zone_is_judged_as_its_address",
        ),
    },
    "the name does not resolve": {
        CHECK: (
            "test_unresolvable_name_in_namespace",
            "test_a_name_that_does_not_exist_is_eai_noname",
        ),
    },
    "no free ephemeral port (`ip_local_port_range` narrowed)": {
        CHECK: (
            "test_ten_local_ports_for_forty_dropped_ports",
            "test_two_local_ports_for_twenty_attempts_to_one_destination",
        ),
    },
    "one destination out of local ports (a 100-port range, every port in a connection to it)": {
        RESOURCES: ("test_one_destination_out_of_ports_leaves_the_others_their_slots",),
    },
    "ports held by another process (none of ours in flight)": {
        CHECK: (
            "test_ports_taken_by_another_process_are_a_shortage_not_an_error",
            "test_ports_held_elsewhere_for_good_end_in_exit_2_after_30_s",
        ),
    },
    "slow standard input or a FIFO": {
        CHECK: (
            "test_slow_stdin_does_not_stretch_a_timeout",
            "test_signal_while_waiting_for_stdin",
            "test_a_slow_fifo_does_not_stretch_a_timeout",
            "test_a_signal_stops_a_check_waiting_for_a_fifo",
        ),
    },
    "no free descriptor (`prlimit --nofile=64`)": {
        CHECK: (
            "test_sixty_four_descriptors_for_two_thousand_ports",
            "test_descriptor_limit_lowered_mid_run",
            "test_a_low_descriptor_limit_is_said_in_one_line",
        ),
    },
    "SIGINT or SIGTERM during `probe check`": {
        CHECK: (
            "test_signal_mid_sweep",
            "test_ctrl_c_to_the_process_group_mid_sweep",
            "test_sigint_writes_whole_records_and_exits_130",
            "test_unresolvable_name_until_interrupted_in_namespace",  # the human summary
        ),
        "check/test_tcping.py": ("test_count_zero_runs_until_signal_then_summary",),
    },
    "SIGINT while standard input never ends": {
        CHECK: ("test_sigint_with_endless_stdin_leaves_no_noise_on_stderr",),
    },
    "standard output closed early (`\\| head -1`)": {
        CHECK: (
            "test_head_one_in_a_shell_pipeline",
            "test_head_one_after_a_sweep_with_workers",
            "test_reader_leaves_after_one_line_quietly",
            "test_head_one_is_exit_141",
        ),
    },
    "a bad line in `@FILE` or on stdin, met mid-run": {
        CHECK: (
            "test_bad_line_3_of_target_file",
            "test_a_bad_stdin_line_lets_the_attempt_in_flight_finish",
        ),
    },
    "SIGTERM / SIGINT to the daemon": {
        DAEMON: (
            "test_sigterm_finishes_the_attempt_in_flight",
            "test_sigint_exits_zero",
        ),
        RESOURCES: ("test_daemon_sockets_stay_within_concurrency_then_sigterm_drains",),
    },
    "SIGHUP during that drain": {
        HOSTILE: ("test_sighup_during_the_drain_is_ignored",),
    },
    "a second SIGTERM / SIGINT during the drain": {
        HOSTILE: ("test_a_second_signal_ends_the_drain_at_once",),
    },
    "SIGHUP storm while the config is rewritten": {
        DAEMON: ("test_sighup_storm_ends_on_the_last_valid_config",),
    },
    "the daemon's log is unwritable (`/dev/full`)": {
        DAEMON: ("test_log_to_dev_full_stops_the_daemon",),
        OUTPUT: (
            "test_daemon_log_on_an_unwritable_path_is_loud",
            "test_daemon_log_on_a_read_only_mount_is_loud",
            "test_a_daemon_logging_to_dev_full_exits_1_with_one_line",
        ),
    },
    "the daemon's disk fills up (a 64 KiB tmpfs)": {
        OUTPUT: ("test_a_full_disk_leaves_only_whole_lines_and_the_next_run_appends_cleanly",),
    },
    "the daemon's log file is deleted or replaced": {
        OUTPUT: (
            "test_a_removed_log_file_is_reopened_within_a_second",
            "test_a_replaced_log_file_is_reopened_and_said_so",
        ),
    },
    "`[log] file` is a FIFO": {
        OUTPUT: (
            "test_a_fifo_without_a_reader_as_log_file_is_one_line_and_exit_2",
            "test_a_fifo_log_nobody_reads_holds_neither_healthz_nor_sigterm",
        ),
    },
    "output nobody reads (an unread stdout or FIFO)": {
        OUTPUT: (
            "test_sigterm_ends_probe_run_logging_to_an_unread_stdout",
            "test_sigterm_ends_a_continuous_check_into_an_unread_pipe",
        ),
        NATIVE: ("test_a_stop_leaves_a_reader_that_does_not_read_whole_lines",),
        "faults/test_broken_log_events.py": (
            "test_an_event_that_finds_the_log_broken_stops_the_daemon",
            "test_a_resolve_event_that_finds_the_log_broken_stops_the_daemon",
        ),
    },
    "`probe check` into a slow or late reader (`\\| less`, `\\| (sleep 3; wc -l)`)": {
        OUTPUT: (
            "test_a_late_reader_gets_every_record_and_no_false_timeout",
            "test_sigterm_ends_a_check_waiting_for_its_reader",
        ),
        NATIVE: (
            "test_human_lines_wait_for_a_slow_reader_in_bounded_room",
            "test_a_stop_ends_human_output_held_by_its_reader",
        ),
    },
    "the log file's directory is removed": {
        OUTPUT: ("test_a_removed_log_directory_is_exit_1_naming_the_file",),
    },
    "a flood of `GET /probe` (to a port that drops SYNs)": {
        HOSTILE: ("test_probe_flood_to_a_dropped_port_leaves_the_schedule_its_slots",),
        RESOURCES: (
            "test_probe_flood_shares_the_concurrency_bound",
            "test_probe_flood_gets_ten_slots_by_default_then_busy",
        ),
        "daemon/test_config.py": ("test_probe_concurrency_stays_below_the_schedule",),
    },
    "DNS hangs for `GET /probe` names": {
        HOSTILE: (
            "test_hung_probe_lookups_do_not_starve_a_named_target_added_by_reload",
            "test_a_hung_probe_lookup_ends_at_the_attempts_timeout",
        ),
    },
    "DNS fails or hangs when a scheduled name is re-resolved (every 60 s)": {
        HOSTILE: (
            "test_a_hung_re_resolution_keeps_the_last_good_address",
            "test_a_failed_re_resolution_keeps_the_last_good_address",
        ),
    },
    "SIGTERM while a `GET /probe` waits on a hung lookup": {
        HOSTILE: ("test_sigterm_abandons_a_hung_probe_lookup_at_once",),
    },
    "600 half-sent requests (slowloris) under `prlimit --nofile=512`": {
        HOSTILE: ("test_slowloris_under_a_low_descriptor_limit_stops_neither_probes_nor_metrics",),
        HTTP: ("test_http_headers_have_5_s_and_the_oldest_idle_connection_makes_room",),
    },
    "100 HTTP clients under `prlimit --nofile=64`": {
        RESOURCES: ("test_http_clients_under_nofile_64_leave_the_schedule_its_slots",),
    },
    "80 clients that never read, each pipelining 20 `GET /metrics`": {
        HTTP: ("test_clients_that_do_not_read_are_cut_and_healthz_keeps_answering",),
        SERVING: ("test_a_client_that_does_not_read_holds_a_bounded_kernel_buffer",),
    },
    "300 malformed requests": {
        HTTP: ("test_malformed_requests_are_one_log_line_not_tracebacks",),
    },
    "`HEAD /metrics` on a kept-alive connection": {
        HTTP: ("test_head_metrics_has_no_body_and_the_next_answer_follows_cleanly",),
    },
    "a request, then the client's FIN (`shutdown(SHUT_WR)`, `nc -N`)": {
        HTTP: ("test_a_half_closed_request_gets_its_answer",),
    },
    "any answer (`/probe` 400s and `debug=true` included)": {
        HTTP: ("test_answers_say_nosniff_and_name_no_versions",),
    },
    "`/metrics` with thousands of targets": {
        HOSTILE: ("test_scrapes_of_a_big_page_do_not_delay_scheduled_starts",),
        SERVING: ("test_a_scrape_never_gets_a_render_begun_before_it_arrived",),
    },
    "the daemon stalls (SIGSTOP, an overloaded machine)": {
        HOSTILE: (
            "test_a_stalled_daemon_counts_and_logs_its_late_starts",
            "test_a_stall_skips_slots_and_does_not_make_them_up",
        ),
        "daemon/test_schedule.py": ("test_stall_counts_missed_slots_and_resumes_without_burst",),
    },
    "the wall clock steps (back or forward an hour)": {
        HOSTILE: (
            "test_clock_step_re_anchors_the_schedule_unit",
            "test_a_wall_clock_step_neither_stops_nor_bursts_probing",
        ),
    },
    "`GET /probe` for an address outside `probe_allow` (after resolution)": {
        DAEMON: ("test_probe_outside_allow_is_403_and_connects_nowhere",),
        HTTP: ("test_probe_allow_is_judged_after_name_resolution",),
        METRICS: ("test_probe_forbidden_keeps_403_and_connects_nowhere",),
    },
}


# -- the map itself --------------------------------------------------------------------------------


def test_every_row_has_its_tests() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    section = page.split("\n## Failure table\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    faults = [row[2:].split(" | ", 1)[0] for row in rows]
    assert faults and len(faults) == len(set(faults))
    assert sorted(faults) == sorted(ROWS), set(faults) ^ set(ROWS)
    here = ROOT / "tests"
    defined: dict[str, set[str]] = {}
    for tests in ROWS.values():
        for path, names in tests.items():
            if path not in defined:
                tree = ast.parse((here / path).read_text())
                functions = (ast.FunctionDef, ast.AsyncFunctionDef)
                defined[path] = {n.name for n in tree.body if isinstance(n, functions)}
            missing = set(names) - defined[path]
            assert not missing, (path, missing)
