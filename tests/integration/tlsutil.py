"""Throwaway certificate authorities (openssl CLI) and a TLS-terminating nginx in front of the
stock master's msgpack port, for test_tls.py.  Everything listens on 127.0.0.1; nginx is
started in the foreground by us and stopped by PID.

    ca = CA(dir, 'test-ca')
    ca.leaf('server', dns=['localhost'], ips=['127.0.0.1'])  -> (cert_path, key_path)
    ca.leaf('expired', ..., start='20200101000000Z', end='20200102000000Z')
    ca.leaf('client', client=True)

    with Nginx(dir, servers=[dict(port=.., cert=.., key=.., upstream=master_port,
                                  client_ca=None, protocols=None, ciphers=None,
                                  upgrade=True, read_timeout='3600s')]) as ng: ...
"""

import os
import shutil
import socket
import subprocess
import time

import bbmaster

EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']


def _run(argv, cwd):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(argv)} failed ({r.returncode}):\n{r.stderr}')
    return r


class CA:
    """A self-signed CA in `dir`; leaf() issues certificates with `openssl ca`, which takes
    explicit start and end dates (OpenSSL 3.0's `x509 -req` cannot backdate)."""

    def __init__(self, dir, name):
        self.dir = dir
        os.makedirs(os.path.join(dir, 'db'), exist_ok=True)
        self.cert = os.path.join(dir, 'ca.pem')
        self.key = os.path.join(dir, 'ca.key')
        _run(['openssl', 'req', '-x509', *EC, '-keyout', self.key, '-out', self.cert,
              '-days', '2', '-subj', f'/CN={name}'], dir)
        open(os.path.join(dir, 'db', 'index.txt'), 'w').close()
        with open(os.path.join(dir, 'db', 'serial'), 'w') as f:
            f.write('1000\n')

    def leaf(self, name, dns=(), ips=(), client=False, start=None, end=None):
        csr = os.path.join(self.dir, f'{name}.csr')
        key = os.path.join(self.dir, f'{name}.key')
        cert = os.path.join(self.dir, f'{name}.pem')
        _run(['openssl', 'req', *EC, '-keyout', key, '-out', csr, '-subj', f'/CN={name}'],
             self.dir)
        san = ','.join([f'DNS:{d}' for d in dns] + [f'IP:{i}' for i in ips])
        usage = 'clientAuth' if client else 'serverAuth'
        cnf = os.path.join(self.dir, f'{name}.cnf')
        with open(cnf, 'w') as f:
            f.write('[ca]\ndefault_ca = d\n'
                    '[d]\ndir = .\ndatabase = db/index.txt\nnew_certs_dir = db\n'
                    'serial = db/serial\ndefault_md = sha256\npolicy = p\n'
                    'unique_subject = no\nx509_extensions = ext\n'
                    '[p]\ncommonName = supplied\n'
                    f'[ext]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = {usage}\n' +
                    (f'subjectAltName = {san}\n' if san else ''))
        argv = ['openssl', 'ca', '-batch', '-notext', '-config', cnf, '-cert', self.cert,
                '-keyfile', self.key, '-in', csr, '-out', cert]
        if start or end:
            argv += ['-startdate', start or '20200101000000Z', '-enddate', end or '20990101000000Z']
        else:
            argv += ['-days', '2']
        _run(argv, self.dir)
        return cert, key


class Nginx:
    """nginx (Debian's nginx-light), one `server` per entry of `servers`, each TLS on
    127.0.0.1:port proxying WebSocket to 127.0.0.1:upstream."""

    def __init__(self, dir, servers):
        self.dir = dir
        self.servers = servers
        self.proc = None
        self.binary = shutil.which('nginx') or '/usr/sbin/nginx'
        if not os.path.exists(self.binary):
            raise RuntimeError('nginx is not installed (apt-get install nginx-light; '
                               'scripts/check installs it)')

    def config(self):
        blocks = []
        for s in self.servers:
            client = (f'        ssl_client_certificate {s["client_ca"]};\n'
                      '        ssl_verify_client on;\n') if s.get('client_ca') else ''
            ciphers = f'        ssl_ciphers {s["ciphers"]};\n' if s.get('ciphers') else ''
            # upgrade=False: the classic mistake, a reverse proxy that drops the WebSocket
            # upgrade headers (hop-by-hop, so nginx does not forward them by itself)
            upgrade = ('            proxy_set_header Upgrade $http_upgrade;\n'
                       '            proxy_set_header Connection "upgrade";\n'
                       if s.get('upgrade', True) else '')
            blocks.append(f"""
    server {{
        listen 127.0.0.1:{s['port']} ssl;
        ssl_certificate {s['cert']};
        ssl_certificate_key {s['key']};
        ssl_protocols {s.get('protocols', 'TLSv1.2 TLSv1.3')};
{ciphers}{client}        location / {{
            proxy_pass http://127.0.0.1:{s['upstream']};
            proxy_http_version 1.1;
{upgrade}            proxy_read_timeout {s.get('read_timeout', '3600s')};
            proxy_send_timeout {s.get('read_timeout', '3600s')};
            proxy_buffering off;
        }}
    }}""")
        tmp = os.path.join(self.dir, 'tmp')
        return f"""user root;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{''.join(blocks)}
}}
"""

    def start(self):
        os.makedirs(os.path.join(self.dir, 'tmp'), exist_ok=True)
        conf = os.path.join(self.dir, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write(self.config())
        self.log = open(os.path.join(self.dir, 'stderr.log'), 'wb')
        self.proc = subprocess.Popen([self.binary, '-p', self.dir, '-c', conf,
                                      '-e', os.path.join(self.dir, 'error.log'),
                                      '-g', 'daemon off;'],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        for s in self.servers:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f'nginx exited {self.proc.returncode}: '
                                       f'{self.error_log()[-2000:]}')
                try:
                    socket.create_connection(('127.0.0.1', s['port']), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError('nginx did not listen: ' + self.error_log()[-2000:])
                    time.sleep(0.05)
        return self

    def error_log(self):
        try:
            with open(os.path.join(self.dir, 'error.log'), errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # the master process and its worker share our new session: signal the group
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self.proc:
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port():
    return bbmaster.free_port()
