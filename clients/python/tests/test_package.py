"""The package as users install it: `pip install ./clients/python` gives an importable,
typed `connmon` whose version is the agent's; the single-file client still works alone."""

import os
import re
import shutil
import subprocess
import sys

from harness import PACKAGE_DIR

import connmon


def test_pip_installs_a_typed_package_versioned_with_the_agent(tmp_path):
    # Build from a copy: an in-tree build leaves build/ and *.egg-info behind.
    source = tmp_path / "src"
    shutil.copytree(os.path.join(PACKAGE_DIR, "connmon"), source / "connmon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(PACKAGE_DIR, name), source)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert (target / "connmon" / "py.typed").exists()
    assert (target / "connmon" / "scrapy.py").exists()
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import connmon, connmon.scrapy; "
         "print(connmon.__version__, connmon.__file__)", str(target)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    assert out[1].startswith(str(target)), out
    cargo = open(os.path.join(PACKAGE_DIR, "../../Cargo.toml")).read()
    agent_version = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', cargo).group(1)
    assert out[0] == agent_version == connmon.__version__
    pyproject = open(os.path.join(PACKAGE_DIR, "pyproject.toml")).read()
    assert f'\nversion = "{agent_version}"' in pyproject


def test_the_single_file_client_works_alone(tmp_path):
    copy = shutil.copy(os.path.join(PACKAGE_DIR, "connmon_client.py"), tmp_path)
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import connmon_client as c; "
         "print(c.Client.__name__, c.AsyncClient.__name__, c.DEFAULT_SOCKET)", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    assert out == ["Client", "AsyncClient", "/run/connmon/connmon.sock"]
    assert open(copy).read() == open(os.path.join(PACKAGE_DIR, "connmon", "client.py")).read()
