"""The test suite's own rule for backend-parametrized tests: the tensors of a test that runs a
backend live on that backend's device (`require_backend` returns it: the GPU for Triton when there
is one). On CI's CPU the Triton interpreter takes CPU tensors, so a test that drops the device
passes there and fails only on a GPU; this check finds such a test from its source."""
import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _parametrizes_backend(func: ast.FunctionDef) -> bool:
    for deco in func.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "parametrize" and deco.args:
            names = deco.args[0]
            if isinstance(names, ast.Constant) and "backend" in str(names.value).replace(" ", "").split(","):
                return True
    return False


def _may_run_triton(func: ast.FunctionDef) -> bool:
    """Its backends are a literal naming "triton", or a name (BACKENDS, FUSED_BACKENDS, ...)."""
    for deco in func.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "parametrize" and len(deco.args) > 1:
            values = deco.args[1]
            if any(isinstance(n, ast.Name) for n in ast.walk(values)) or \
                    any(isinstance(n, ast.Constant) and n.value == "triton" for n in ast.walk(values)):
                return True
    return False


def _runs_a_backend_without_a_device(func: ast.FunctionDef) -> bool:
    """It calls use_backend / compare_with_reference but never sets a `device` to put tensors on."""
    calls = {getattr(c.func, "id", getattr(c.func, "attr", None)) for c in ast.walk(func) if isinstance(c, ast.Call)}
    assigned = {t.id for n in ast.walk(func) if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in ast.walk(n.targets[0] if isinstance(n, ast.Assign) else n.target) if isinstance(t, ast.Name)}
    return bool(calls & {"use_backend", "compare_with_reference"}) and "device" not in assigned


def _discarded_device_calls(func: ast.FunctionDef) -> list[int]:
    """Lines where require_backend(op, backend, ...) is called for the parametrized backend and its
    device thrown away."""
    lines = []
    for node in ast.walk(func):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            name = getattr(call.func, "id", getattr(call.func, "attr", None))
            if name == "require_backend" and len(call.args) >= 2 and \
                    isinstance(call.args[1], ast.Name) and call.args[1].id == "backend":
                lines.append(node.lineno)
    return lines


def test_backend_tests_keep_the_device_require_backend_returns():
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and _parametrizes_backend(node):
                where = f"{path.relative_to(TESTS)}:{{}} ({node.name})"
                offenders += [where.format(line) for line in _discarded_device_calls(node)]
                if _may_run_triton(node) and _runs_a_backend_without_a_device(node):
                    offenders.append(where.format(node.lineno) + " sets no device")
    assert not offenders, "tensors would stay on the CPU for a backend run on the GPU: " + ", ".join(offenders)


def test_the_check_finds_a_dropped_device():
    source = '''
@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_x(backend):
    require_backend(OP, backend)
    x = torch.zeros(3)
'''
    func = ast.parse(source).body[0]
    assert _parametrizes_backend(func) and _discarded_device_calls(func) == [4]
    no_device = ast.parse(source.replace("require_backend(OP, backend)", "with pyaudiok.use_backend(backend):\n"
                                                                          "        pass")).body[0]
    assert _may_run_triton(no_device) and _runs_a_backend_without_a_device(no_device)
    cpu_only = ast.parse(source.replace('("cpu", "triton")', '("cpu",)')).body[0]
    assert not _may_run_triton(cpu_only)
