from setuptools import setup, find_packages

setup(
    name="dragonfly",
    version="0.1.0",
    description="P2P file and container-image distribution on Twisted",
    python_requires=">=3.11",
    packages=find_packages(include=["dragonfly", "dragonfly.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/dragonfly_plugins.py"],
                  "dragonfly.supernode": ["ui/*.html"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "zope.interface",
        "prometheus-client>=0.20",
        "pyOpenSSL",
        "service-identity",
        "blake3>=1.0",   # piece digests (dragonfly/digest.py)
    ],
    extras_require={"test": ["hypothesis"]},
    entry_points={"console_scripts": ["dfget = dragonfly.dfget.cli:run",
                                      "dfctl = dragonfly.dfctl.cli:run",
                                      "dragonfly-pki = dragonfly.pki:run"]},
)
