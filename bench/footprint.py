"""Installed footprint of cworker and of the stock buildbot-worker, measured the same way.

Two views:

* files: the cworker binary plus every shared library ldd lists for it, except the C
  library family (libc, libm, libpthread, libdl, librt, ld-linux, vdso), which every
  Debian has; sizes of the real files.
* Debian packages: what you would have to add to a minimal Debian 12 to run it.
  "Minimal Debian" = the packages of Priority 'required' plus 'apt' and everything they
  depend on (what `debootstrap --variant=minbase` and the debian:12 container image hold),
  taken from this machine's dpkg database. The closure of the packages to add is computed
  twice, and both are reported:
    - resolver: the dependency closure (Depends + Pre-Depends, no Recommends) of the
      packages, resolved against the packages installed here (each alternative group
      resolves to the first installed alternative or provider), minus the minimal set;
    - apt: `apt-get install --simulate --no-install-recommends` against a dpkg status file
      that holds only the minimal set, i.e. apt's own answer to "what would installing
      this on a minimal Debian pull in".
  Sizes are the packages' Installed-Size (KiB, from the Debian control data).
  For cworker the packages are those that own its shared libraries (dpkg -S) - cworker itself
  is not a Debian package, so its binary size is added.  The shared libraries are those ldd
  lists plus those the binary loads with dlopen() on first use (libssl.so.N for wss://, meson
  option tls_dlopen; libz and libbz2 for compressed directory uploads; named in the binary)
  and what they need.
"""

import os
import re
import subprocess
import tempfile

LIBC_FAMILY = re.compile(r'^(linux-vdso|linux-gate|ld-linux[-\w.]*|libc|libm|libpthread|libdl|librt|'
                         r'libresolv|libutil)\.so')


def _run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def ldd_libs(binary):
    """[(soname, real path, size)] of the shared libraries ldd lists (libc family excluded)."""
    out = _run(['ldd', binary], check=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r'(\S+)\s+=>\s+(\S+)\s+\(', line)
        if not m:
            continue
        name, path = m.group(1), m.group(2)
        if LIBC_FAMILY.match(name):
            continue
        real = os.path.realpath(path)
        libs.append((name, real, os.path.getsize(real)))
    return libs


def dlopen_libs(binary):
    """[(soname, real path, size)] of the libraries the binary dlopen()s on first use (libssl
    for wss://, zlib and libbz2 for compressed directory uploads: their names are strings in
    the binary) and of their own dependencies, libc family excluded."""
    with open(binary, 'rb') as f:
        data = f.read()
    names = sorted(set(m.decode() for m in re.findall(
        rb'\x00((?:libssl|libz|libbz2)\.so\.[0-9][0-9.]*)\x00', data)))
    libs = []
    for name in names:
        path = next((os.path.join(d, name) for d in ('/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu',
                                                     '/lib64', '/usr/lib64', '/lib', '/usr/lib')
                     if os.path.exists(os.path.join(d, name))), None)
        if path is None:
            ldconfig = _run(['/sbin/ldconfig', '-p']).stdout
            m = re.search(r'^\s*' + re.escape(name) + r' .*=> (\S+)$', ldconfig, re.M)
            path = m.group(1) if m else None
        if path is None:
            continue
        real = os.path.realpath(path)
        libs.append((name, real, os.path.getsize(real)))
        libs += ldd_libs(real)
    seen, out = set(), []
    for lib in libs:
        if lib[1] not in seen:
            seen.add(lib[1])
            out.append(lib)
    return out


def _parse_status(text):
    pkgs = {}
    for para in text.split('\n\n'):
        fields = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (' ', '\t') and key:
                fields[key] += '\n' + line
                continue
            if ':' in line:
                key, _, val = line.partition(':')
                fields[key] = val.strip()
        name = fields.get('Package')
        if not name or 'install ok installed' not in fields.get('Status', ''):
            continue
        fields['_para'] = para
        pkgs[name] = fields
    return pkgs


def _dep_groups(fields):
    groups = []
    for key in ('Pre-Depends', 'Depends'):
        val = fields.get(key)
        if not val:
            continue
        for grp in val.replace('\n', ' ').split(','):
            alts = []
            for alt in grp.split('|'):
                alt = re.sub(r'\(.*?\)|\[.*?\]|<.*?>', '', alt).strip()
                alt = alt.split(':')[0]  # python3:any, foo:amd64
                if alt:
                    alts.append(alt)
            if alts:
                groups.append(alts)
    return groups


class Installed:
    """The dpkg database of this machine, with Provides."""

    def __init__(self, status_path='/var/lib/dpkg/status'):
        with open(status_path, encoding='utf-8', errors='replace') as f:
            self.pkgs = _parse_status(f.read())
        self.providers = {}
        for name, f in self.pkgs.items():
            for prov in f.get('Provides', '').split(','):
                prov = re.sub(r'\(.*?\)', '', prov).strip().split(':')[0]
                if prov:
                    self.providers.setdefault(prov, []).append(name)

    def resolve(self, dep):
        if dep in self.pkgs:
            return dep
        prov = self.providers.get(dep)
        return prov[0] if prov else None

    def closure(self, roots):
        seen, todo, missing = set(), list(roots), set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            for alts in _dep_groups(self.pkgs[p]):
                chosen = next((r for r in (self.resolve(a) for a in alts) if r), None)
                if chosen is None:
                    missing.add('|'.join(alts))
                elif chosen not in seen:
                    todo.append(chosen)
        return seen, missing

    def size_kib(self, pkgs):
        return sum(int(self.pkgs[p].get('Installed-Size', '0') or 0) for p in pkgs)

    def minimal_set(self):
        roots = [p for p, f in self.pkgs.items() if f.get('Priority') == 'required']
        if 'apt' in self.pkgs:
            roots.append('apt')
        return self.closure(roots)[0]


def owning_packages(paths):
    """Debian packages owning these files (one dpkg -S call; merged-/usr aware)."""
    cands = {}
    for p in paths:
        alts = [p]
        if p.startswith('/usr/lib/'):
            alts.append(p[4:])
        elif p.startswith('/lib/'):
            alts.append('/usr' + p)
        for a in alts:
            cands[a] = p
    r = _run(['dpkg', '-S'] + sorted(cands))
    pkgs, found = set(), set()
    for line in r.stdout.splitlines():
        pkg, _, path = line.partition(': ')
        if path.strip() in cands:
            pkgs.add(pkg.split(':')[0].strip())
            found.add(cands[path.strip()])
    return pkgs, sorted(set(paths) - found)


def apt_simulate(inst, minimal, packages):
    """Packages apt would install for `packages` on a machine holding only `minimal`."""
    with tempfile.TemporaryDirectory(prefix='bench-apt-') as d:
        status = os.path.join(d, 'status')
        with open(status, 'w') as f:
            f.write('\n\n'.join(inst.pkgs[p]['_para'] for p in sorted(minimal)) + '\n\n')
        r = _run(['apt-get', '-s', '-o', f'Dir::State::status={status}', 'install',
                  '--no-install-recommends'] + sorted(packages))
    if r.returncode != 0:
        return None, r.stdout + r.stderr
    got = set()
    for line in r.stdout.splitlines():
        m = re.match(r'Inst (\S+) (\[)?', line)
        if m and not m.group(2):  # 'Inst pkg [old] (new)' is an upgrade, not an addition
            got.add(m.group(1).split(':')[0])
    return got, None


def apt_installed_size_kib(pkgs):
    """Installed-Size (KiB) from the apt cache, one apt-cache call for all packages."""
    if not pkgs:
        return 0
    out = _run(['apt-cache', 'show', '--no-all-versions'] + sorted(pkgs)).stdout
    total = 0
    for para in out.split('\n\n'):
        m = re.search(r'^Installed-Size: (\d+)', para, re.M)
        if m and re.search(r'^Package: ', para, re.M):
            total += int(m.group(1))
    return total


def _package_views(inst, minimal, lib_pkgs, stock_root):
    res = {'minimal_packages': len(minimal), 'minimal_kib': inst.size_kib(minimal)}
    for label, roots in (('cworker', lib_pkgs), ('stock', {stock_root})):
        clos, missing = inst.closure(roots)
        add = sorted(clos - minimal)
        res[f'{label}_resolver_packages'] = add
        res[f'{label}_resolver_kib'] = inst.size_kib(add)
        res[f'{label}_resolver_unresolved'] = sorted(missing)
        got, err = apt_simulate(inst, minimal, roots)
        if got is None:
            res[f'{label}_apt_error'] = err[-2000:]
        else:
            res[f'{label}_apt_packages'] = sorted(got)
            res[f'{label}_apt_kib'] = apt_installed_size_kib(got)
        per_pkg = {p: int(inst.pkgs[p].get('Installed-Size', '0') or 0) for p in add}
        res[f'{label}_biggest'] = sorted(per_pkg.items(), key=lambda kv: -kv[1])[:6]
    return res


def measure(cworker_bin, stock_root='buildbot-worker', cache_path=None):
    """Footprint figures (dict). The package views take ~10 s (apt is slow); they are cached
    in `cache_path` keyed on the dpkg database's mtime and the library packages."""
    import json
    libs = ldd_libs(cworker_bin)
    linked = {p for _, p, _ in libs}
    loaded = [lib for lib in dlopen_libs(cworker_bin) if lib[1] not in linked]
    libs += loaded
    bin_size = os.path.getsize(cworker_bin)
    lib_pkgs, unowned = owning_packages([p for _, p, _ in libs])
    res = {'cworker_binary_bytes': bin_size, 'cworker_libs': libs,
           'cworker_dlopen_libs': [n for n, _, _ in loaded],
           'cworker_files_bytes': bin_size + sum(s for _, _, s in libs),
           'cworker_lib_packages': sorted(lib_pkgs), 'cworker_unowned_libs': unowned}
    key = json.dumps([os.stat('/var/lib/dpkg/status').st_mtime, sorted(lib_pkgs), stock_root])
    views = None
    if cache_path and os.path.exists(cache_path):
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            if cached.get('key') == key:
                views = cached['views']
        except (OSError, ValueError):
            views = None
    if views is None:
        inst = Installed()
        views = _package_views(inst, inst.minimal_set(), lib_pkgs, stock_root)
        if cache_path:
            with open(cache_path, 'w') as f:
                json.dump({'key': key, 'views': views}, f)
    res.update(views)
    # cworker itself is not a package: add its binary to the package views
    for k in ('cworker_resolver_kib', 'cworker_apt_kib'):
        if k in res:
            res[k + '_with_binary'] = res[k] + bin_size / 1024
    return res


if __name__ == '__main__':
    import json
    import sys
    print(json.dumps(measure(sys.argv[1]), indent=1, default=str))
