"""The registry set-up the image tests share: a local ``docker-registry``
started for one test, and an OCI layout pushed to a registry (or a mirror in
front of one) with skopeo. The fixtures underneath are
L{dragonfly.test.integration.registry_fixtures}'s."""
from dragonfly.test.integration import registry_fixtures as rf

__all__ = ["start_registry", "push_layout"]


async def start_registry(test, clock, directory):
    """An anonymous L{rf.Registry} storing under C{directory}, started, and
    stopped at C{test}'s cleanup."""
    registry = rf.Registry(directory)
    test.addCleanup(registry.stop, clock)
    await registry.start(clock)
    return registry


async def push_layout(test, clock, workdir, layout, tag, target, creds=None, all_images=False,
                      failed="skopeo push failed"):
    """``skopeo copy oci:LAYOUT:TAG docker://TARGET`` over plain HTTP
    (C{target}: ``HOST:PORT/REPO:TAG``), asserting through C{test} that it
    succeeded (the message: C{failed} and skopeo's stderr). C{creds}: a
    C{(user, password)} for the registry; C{all_images}: every image of an
    index (``--all``). Returns skopeo's C{(stdout, stderr)}."""
    args = ["copy"] + (["--all"] if all_images else []) + ["--dest-tls-verify=false"]
    if creds is not None:
        args += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    args += [f"oci:{layout}:{tag}", f"docker://{target}"]
    code, out, err = await rf.skopeo(clock, workdir, "skopeo-push", args)
    test.assertEqual(code, 0, f"{failed}: {err}")
    return out, err
