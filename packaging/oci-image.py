#!/usr/bin/python3
"""Write an OCI image (image-spec 1.0 layout, as a directory and as an oci-archive tarball) from
one root-file-system tarball and the configuration instructions of packaging/Containerfile,
with nothing but the Python standard library: no container tool, no network.

    oci-image.py --containerfile packaging/Containerfile --layer cworker-rootfs.tar \
        --layout DIR --archive FILE.oci.tar --arch amd64 --created EPOCH [--label K=V ...]

The Containerfile is the one source of the image's configuration: this reads its USER,
WORKDIR, ENV, LABEL, STOPSIGNAL, CMD and ENTRYPOINT, and refuses anything it does not
understand (a RUN, a second layer, a base other than scratch), so the hand-made image and the
one podman or buildah builds from the same file cannot drift apart.  The output is
reproducible: the same tarball, file and epoch give the same digests.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shlex
import sys
import tarfile

# Debian architecture -> (OCI architecture, variant)
ARCHES = {'amd64': ('amd64', None), 'arm64': ('arm64', 'v8'), 'armhf': ('arm', 'v7'),
          'i386': ('386', None), 'ppc64el': ('ppc64le', None), 's390x': ('s390x', None),
          'riscv64': ('riscv64', None)}


def fail(msg):
    sys.exit(f'oci-image.py: {msg}')


def instructions(path):
    """[(INSTRUCTION, argument text)] of a Containerfile: comments dropped, continuations joined."""
    out, cur = [], ''
    with open(path, encoding='utf-8') as f:
        for line in f:
            s = line.rstrip('\n')
            if not cur and (not s.strip() or s.lstrip().startswith('#')):
                continue
            if s.endswith('\\'):
                cur += s[:-1] + ' '
                continue
            cur += s
            word, _, rest = cur.strip().partition(' ')
            out.append((word.upper(), rest.strip()))
            cur = ''
    if cur:
        fail(f'{path}: continuation at the end of the file')
    return out


def pairs(text, what):
    d = {}
    for item in shlex.split(text):
        k, eq, v = item.partition('=')
        if not eq or not k:
            fail(f'{what} {item!r}: expected KEY=VALUE')
        d[k] = v
    return d


def image_config(path, layer_name):
    """The `config` object of the image configuration, from the Containerfile."""
    cfg, env, labels, adds = {}, {}, {}, []
    for word, arg in instructions(path):
        if word == 'FROM':
            if arg != 'scratch':
                fail(f'{path}: FROM {arg}: only FROM scratch is supported')
        elif word == 'ADD':
            parts = shlex.split(arg)
            if parts != [layer_name, '/']:
                fail(f'{path}: ADD {arg}: expected "ADD {layer_name} /"')
            adds.append(arg)
        elif word in ('USER', 'WORKDIR', 'STOPSIGNAL'):
            cfg[{'USER': 'User', 'WORKDIR': 'WorkingDir', 'STOPSIGNAL': 'StopSignal'}[word]] = arg
        elif word == 'ENV':
            env.update(pairs(arg, 'ENV'))
        elif word == 'LABEL':
            labels.update(pairs(arg, 'LABEL'))
        elif word in ('CMD', 'ENTRYPOINT'):
            try:
                argv = json.loads(arg)
            except ValueError:
                argv = None
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                fail(f'{path}: {word} {arg}: only the JSON (exec) form is supported')
            cfg['Cmd' if word == 'CMD' else 'Entrypoint'] = argv
        else:
            fail(f'{path}: {word}: not supported here (the image has no shell to RUN in)')
    if len(adds) != 1:
        fail(f'{path}: expected exactly one ADD of {layer_name}')
    if env:
        cfg['Env'] = [f'{k}={v}' for k, v in env.items()]
    if labels:
        cfg['Labels'] = labels
    return cfg


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--containerfile', required=True)
    ap.add_argument('--layer', required=True, help='the root file system as an uncompressed tar')
    ap.add_argument('--layout', required=True, help='directory to write the OCI layout into')
    ap.add_argument('--archive', help='also write the layout as this oci-archive tarball')
    ap.add_argument('--arch', required=True, help='Debian architecture name (amd64, arm64, ...)')
    ap.add_argument('--created', type=int, required=True, help='creation time, Unix seconds')
    ap.add_argument('--tag', default='latest', help='org.opencontainers.image.ref.name (podman load names the image by it)')
    ap.add_argument('--label', action='append', default=[], help='extra label KEY=VALUE')
    a = ap.parse_args()
    if a.arch not in ARCHES:
        fail(f'unknown architecture {a.arch}')
    arch, variant = ARCHES[a.arch]
    created = datetime.datetime.fromtimestamp(a.created, datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%SZ')

    config = image_config(a.containerfile, os.path.basename(a.layer))
    for item in a.label:
        config.setdefault('Labels', {}).update(pairs(shlex.quote(item), '--label'))

    with open(a.layer, 'rb') as f:
        tar = f.read()
    buf = io.BytesIO()
    # mtime 0 and no file name in the gzip header: the same tar always compresses the same;
    # level 6 is what the usual image tools use, so the compressed size compares with theirs
    with gzip.GzipFile(filename='', mode='wb', fileobj=buf, compresslevel=6, mtime=0) as g:
        g.write(tar)
    layer_gz = buf.getvalue()

    image = {'created': created, 'architecture': arch, 'os': 'linux', 'config': config,
             'rootfs': {'type': 'layers', 'diff_ids': [sha256(tar)]},
             'history': [{'created': created,
                          'created_by': f'ADD {os.path.basename(a.layer)} / '
                                        '(scripts/build-image, packaging/oci-image.py)'}]}
    if variant:
        image['variant'] = variant
    config_blob = canonical(image)
    manifest = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                           'digest': sha256(config_blob), 'size': len(config_blob)},
                'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip',
                            'digest': sha256(layer_gz), 'size': len(layer_gz)}]}
    manifest_blob = canonical(manifest)
    platform = {'architecture': arch, 'os': 'linux'}
    if variant:
        platform['variant'] = variant
    index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
             'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                            'digest': sha256(manifest_blob), 'size': len(manifest_blob),
                            'platform': platform,
                            'annotations': {'org.opencontainers.image.ref.name': a.tag}}]}

    files = {'oci-layout': canonical({'imageLayoutVersion': '1.0.0'}),
             'index.json': canonical(index)}
    for blob in (layer_gz, config_blob, manifest_blob):
        files['blobs/sha256/' + sha256(blob)[7:]] = blob
    for rel, data in files.items():
        p = os.path.join(a.layout, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as f:
            f.write(data)

    if a.archive:
        with tarfile.open(a.archive, 'w', format=tarfile.PAX_FORMAT) as t:
            for d in ('blobs', 'blobs/sha256'):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, a.created
                t.addfile(ti)
            for rel in sorted(files):
                ti = tarfile.TarInfo(rel)
                ti.size, ti.mode, ti.mtime = len(files[rel]), 0o644, a.created
                t.addfile(ti, io.BytesIO(files[rel]))
    print(json.dumps({'manifest': sha256(manifest_blob), 'config': sha256(config_blob),
                      'layer': sha256(layer_gz), 'layer_size': len(layer_gz),
                      'diff_id': sha256(tar), 'tar_size': len(tar)}))


if __name__ == '__main__':
    main()
