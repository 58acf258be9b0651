#!/usr/bin/python3
"""What the official buildbot/buildbot-worker image weighs, estimated from Debian's own package
index on this machine (no image is downloaded: it cannot be, here).

The image's Dockerfile (buildbot repository, worker/Dockerfile) starts from a Debian image and
`apt-get install`s, with Recommends (the default): build-essential git subversion python3-dev
libffi-dev libssl-dev virtualenv dumb-init curl; then pip installs twisted[tls] and
buildbot-worker into a virtualenv.  This asks apt, against an empty dpkg status (a fresh
system), for the packages that makes on this Debian release (Recommends only where the image's
own apt-get brings them), and adds up their Installed-Size and the size of their .deb files:

* base:   the Debian image alone (the packages of Priority: required, which is what its minbase
          debootstrap installs);
* worker: base + what the worker needs to run: python3, Debian's buildbot-worker (Twisted,
          autobahn, msgpack: the same libraries pip puts in the virtualenv) and dumb-init;
* image:  base + the Dockerfile's whole list (with Recommends) + worker.

Lower bounds: the virtualenv's own copies of pip, setuptools and Twisted, pip's build of
buildbot-worker and the files apt leaves are not counted.  The .deb files are xz-compressed, so
their sum is also below the image's gzip-compressed download.  Needs `apt-get update` first.
"""

import os
import subprocess
import sys
import tempfile

DOCKERFILE = ['build-essential', 'git', 'subversion', 'python3-dev', 'libffi-dev', 'libssl-dev',
              'virtualenv', 'dumb-init', 'curl']
WORKER = ['python3', 'buildbot-worker', 'dumb-init']


def arch():
    return subprocess.run(['dpkg', '--print-architecture'], capture_output=True, text=True,
                          check=True).stdout.strip()


def index():
    """{package: {'Priority', 'Installed-Size', 'Size'}} of the candidate versions."""
    out = subprocess.run(['apt-cache', 'dumpavail'], capture_output=True, text=True,
                         check=True).stdout
    a, pkgs = arch(), {}
    for para in out.split('\n\n'):
        f = {}
        for line in para.splitlines():
            if line[:1] not in (' ', '\t') and ':' in line:
                k, _, v = line.partition(':')
                f[k] = v.strip()
        if f.get('Architecture') in (a, 'all') and 'Package' in f:
            pkgs.setdefault(f['Package'], f)
    return pkgs


def resolve(names, recommends):
    """The packages apt installs for `names` on a system that has nothing yet."""
    with tempfile.TemporaryDirectory() as d:
        status = os.path.join(d, 'status')
        open(status, 'w').close()
        r = subprocess.run(['apt-get', '-s', '-o', f'Dir::State::status={status}',
                            '-o', f'APT::Install-Recommends={str(recommends).lower()}', '-o', 'Debug::NoLocking=1',
                            'install'] + names, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'apt-get -s failed:\n{r.stderr}')
    return {line.split()[1] for line in r.stdout.splitlines() if line.startswith('Inst ')}


def weigh(pkgs, names):
    inst = sum(int(pkgs[n].get('Installed-Size', 0)) for n in names if n in pkgs) * 1024
    deb = sum(int(pkgs[n].get('Size', 0)) for n in names if n in pkgs)
    return inst, deb


def main():
    pkgs = index()
    required = sorted(n for n, f in pkgs.items() if f.get('Priority') == 'required')
    # debootstrap installs no Recommends, the Dockerfile's apt-get does, pip knows none
    sets = {'base': resolve(required, False)}
    sets['worker'] = resolve(required + WORKER, False)
    sets['image'] = resolve(required + DOCKERFILE, True) | sets['worker']
    release = subprocess.run(['sh', '-c', '. /etc/os-release && echo "$PRETTY_NAME"'],
                             capture_output=True, text=True).stdout.strip()
    print(f'official-image estimate from the {release} package index ({arch()}):')
    for name, s in sets.items():
        inst, deb = weigh(pkgs, s)
        print(f'  {name:7} {len(s):4} packages, installed {inst / 1048576:7.1f} MiB, '
              f'.deb files {deb / 1048576:6.1f} MiB')


if __name__ == '__main__':
    main()
