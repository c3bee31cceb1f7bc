"""Sampling on a device mesh (`generate(..., mesh=)`, the --mesh flag of sample / eval / heatmap /
compare): equal to one device, on 4 simulated devices in a subprocess (tests/mesh_sampling_checks.py),
so the rest of the suite keeps one device."""
import subprocess
import sys

from tests.helpers import ROOT, simulated_devices_env


def test_sampling_on_data2_expert2_returns_the_one_device_images_and_expert_counts():
    env = simulated_devices_env(4)
    run = subprocess.run([sys.executable, "-m", "tests.mesh_sampling_checks"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "mesh sampling checks passed" in run.stdout


def test_every_command_of_the_issue_takes_the_mesh_flag():
    from ecdit.app.cli import build_parser
    parser = build_parser()
    for command in (["sample", "a circle", "--checkpoint", "x"], ["eval", "--checkpoint", "x"],
                    ["heatmap", "a circle", "--checkpoint", "x"], ["compare"], ["train"], ["bench"]):
        assert parser.parse_args(command + ["--mesh", "data=2,expert=2"]).mesh == "data=2,expert=2"
