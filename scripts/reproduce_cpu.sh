#!/usr/bin/env bash
# CPU reproduction study (docs/cpu_reproduction.md): resumable; rerun to continue. Args go to the driver.
cd "$(dirname "$0")/.." && exec nice -n 15 "${PYTHON:-python}" scripts/reproduce_cpu.py "$@"
