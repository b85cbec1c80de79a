"""Many processes pushing to one name at once get distinct, consecutive version numbers."""

import os
import subprocess
import sys

from conftest import make_lora_dir

PUSHER = r"""
import sys
from adapterhub import api
from adapterhub.registry.registry import LocalFile
reg = api.open_registry(sys.argv[1])
src, name, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.stdin.readline()  # start together
for i in range(count):
    pub = api.push(reg, src, name, tags={"round": str(i)}, aliases=[])
    print(pub.version, pub.created, flush=True)
"""


def run_pushers(home, tmp_path, procs, per_proc, db_env=None):
    srcs = [make_lora_dir(tmp_path / f"src{p}", seed=p) for p in range(procs)]
    children = []
    for p in range(procs):
        # each process pushes distinct content per round: rewrite a small file between rounds
        code = PUSHER.replace(
            "pub = api.push(", "open(src + '/round.txt', 'w').write(f'{sys.argv[5]}-{i}')\n    pub = api.push("
        )
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(home), srcs[p], "acme/bot", str(per_proc), str(p)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **(db_env or {})},
            )
        )
    for c in children:
        c.stdin.write("go\n")
        c.stdin.flush()
    numbers, errors = [], []
    for c in children:
        out, err = c.communicate(timeout=600)
        if c.returncode != 0:
            errors.append(err[-2000:])
        numbers += [int(line.split()[0]) for line in out.split()[::2] if line.strip()]
    return numbers, errors


def test_16_processes_x_5_pushes_to_one_name_sqlite(home, tmp_path):
    numbers, errors = run_pushers(home, tmp_path, procs=16, per_proc=5)
    assert errors == []
    assert sorted(numbers) == list(range(1, 81))
    from adapterhub.api import open_registry

    rows = open_registry(str(home)).list("acme/bot")
    assert [r.version for r in rows] == list(range(1, 81))
    assert len({r.digest for r in rows}) == 80
