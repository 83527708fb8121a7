import pytest

from deployments.replica.device import DevicePlan, plan_device


def test_cpu_replica_threads_follow_num_cpus():
    assert plan_device(num_cpus=2, gpu_ids=[], gpu_fraction=0) == DevicePlan("/CPU:0", 2, 2)
    assert plan_device(num_cpus=1, gpu_ids=[], gpu_fraction=0) == DevicePlan("/CPU:0", 1, 1)
    assert plan_device(num_cpus=0.5, gpu_ids=[], gpu_fraction=0).intra_op_threads == 1
    assert plan_device(num_cpus=8, gpu_ids=[], gpu_fraction=0).inter_op_threads == 2
    assert plan_device(num_cpus=2, gpu_ids=[], gpu_fraction=0).cpu_threads == 2  # timed in CPU time


def test_gpu_replica_with_memory_growth():
    plan = plan_device(num_cpus=1, gpu_ids=["0"], gpu_fraction=0.5, gpu_memory="growth")
    assert plan.device == "/GPU:0" and plan.memory_growth and plan.memory_limit_mb is None
    assert plan.cpu_threads is None  # batch sizes timed by the clock


def test_fractional_gpu_gets_its_share_of_memory():
    plan = plan_device(num_cpus=1, gpu_ids=["3"], gpu_fraction=0.25, gpu_memory="limit",
                       gpu_total_memory_mb=16000)
    assert plan.device == "/GPU:0"
    assert plan.memory_limit_mb == 4000 and not plan.memory_growth


def test_whole_gpu_limit_is_all_of_it():
    plan = plan_device(1, ["0"], 1.0, gpu_memory="limit", gpu_total_memory_mb=8000)
    assert plan.memory_limit_mb == 8000


def test_limit_without_total_is_refused():
    with pytest.raises(ValueError, match="gpu_total_memory_mb"):
        plan_device(1, ["0"], 0.5, gpu_memory="limit")
