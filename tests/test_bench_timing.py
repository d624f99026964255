"""The harness's GPU timing (bench/harness.py `_event_median`) against a simulated device: a host
that spends `host_s` launching each call and a stream that runs each call's `device_s` of work in
order, with events stamped when the stream reaches them, as CUDA events are."""
from __future__ import annotations

import pytest

from pyaudiok.bench import harness


class SimulatedGPU:
    def __init__(self, host_s: float, device_s: float):
        self.host_s, self.device_s = host_s, device_s
        self.host_t = 0.0          # the host's clock
        self.stream_free_at = 0.0  # when the stream has run everything queued so far
        self.syncs = 0

    def call(self):
        self.host_t += self.host_s  # the launch reaches the stream when the host is done with it
        self.stream_free_at = max(self.host_t, self.stream_free_at) + self.device_s

    def event(self):
        gpu = self

        class Event:
            def record(self):
                gpu.stream_free_at = max(gpu.host_t, gpu.stream_free_at)
                self.at = gpu.stream_free_at

            def elapsed_time(self, end):  # milliseconds, as torch.cuda.Event's
                return (end.at - self.at) * 1e3
        return Event()

    def sync(self):
        self.syncs += 1
        self.host_t = max(self.host_t, self.stream_free_at)


def timed(gpu: SimulatedGPU, mode: str, min_time: float = 0.01, max_calls: int = 200) -> tuple[float, int]:
    """(median, intervals) of `gpu.call` timed for `min_time` seconds of the simulated host's clock or
    `max_calls` calls."""
    gpu.calls = 0
    call = gpu.call

    def counted():
        gpu.calls += 1
        call()
    return harness._event_median(counted, gpu.event, gpu.sync, min_time=min_time, mode=mode, max_calls=max_calls,
                                 clock=lambda: gpu.host_t)


def test_queued_calls_give_the_device_time_when_the_host_keeps_ahead():
    gpu = SimulatedGPU(host_s=1e-4, device_s=1e-3)
    median, calls = timed(gpu, "queued")
    assert median == pytest.approx(1e-3)
    assert calls >= 3 and gpu.syncs < calls  # no synchronisation after every call


def test_isolated_calls_add_the_host_launch_time():
    gpu = SimulatedGPU(host_s=1e-4, device_s=1e-3)
    median, calls = timed(gpu, "isolated", max_calls=5)
    assert median == pytest.approx(1.1e-3)
    assert gpu.syncs == calls + 1  # the warm-up's and one per call


def test_queued_calls_of_a_host_bound_op_give_its_host_rate():
    """When launching takes longer than running, the queue runs dry: each interval holds the wait."""
    gpu = SimulatedGPU(host_s=2e-3, device_s=1e-4)
    median, _ = timed(gpu, "queued")
    assert median >= 2e-3


def test_a_slow_call_takes_one_burst_of_four():
    """A call longer than the budget: the warm-up and one burst, whose last 3 intervals give the median."""
    gpu = SimulatedGPU(host_s=1e-3, device_s=1.0)
    median, intervals = timed(gpu, "queued", min_time=0.25)
    assert (gpu.calls, intervals, gpu.syncs) == (5, 3, 2)
    assert median == pytest.approx(1.0)


def test_fast_calls_go_in_bursts_of_fifty_within_the_call_cap():
    gpu = SimulatedGPU(host_s=1e-7, device_s=1e-6)
    _, intervals = timed(gpu, "queued", min_time=1.0, max_calls=200)
    assert gpu.calls == 201 and gpu.syncs == 5 and intervals == 4 * 49  # the warm-up, then 4 bursts of 50
    _, intervals = timed(SimulatedGPU(host_s=1e-7, device_s=1e-6), "queued", min_time=1.0, max_calls=10)
    assert intervals == 9  # one burst, cut to the 10 calls allowed


def test_a_call_that_synchronises_inside_gives_its_latency():
    """fn waits for the GPU itself (a value read back): the queue never fills, each interval holds the
    host's launch time, as isolated timing's would."""
    gpu = SimulatedGPU(host_s=1e-4, device_s=1e-3)

    def reads_back():
        gpu.call()
        gpu.sync()
    median, _ = harness._event_median(reads_back, gpu.event, gpu.sync, min_time=0.01, mode="queued",
                                      clock=lambda: gpu.host_t)
    assert median == pytest.approx(1.1e-3)


def test_at_least_three_intervals_and_a_known_mode():
    median, calls = timed(SimulatedGPU(host_s=0.0, device_s=1e-3), "queued", min_time=0.0)
    assert calls >= 3 and median == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="GPU timing must be one of"):
        timed(SimulatedGPU(0.0, 1e-3), "latency")
