// A small real HTTP service for the gateway tests, run as its own process so
// a test can kill it: `node upstream.mjs NAME PORT`. It answers:
//   GET  /readyz                 200, or 503 after POST /control/unhealthy
//   GET  /v1/models              one model named after the service
//   POST /v1/chat/completions    {"stream":true}: SSE events 200 ms apart; else as below
//   GET  .../slow                never answers
//   GET  /control/slow-closed    how many .../slow requests the client side closed
//   POST /control/keepalive?ms=N idle kept-alive connections closed after N ms
//   GET  /control/connections    connections accepted so far
//   GET|HEAD .../download?bytes=N&headers=K&chunked=1
//                                N bytes of 'a'..'z' in 16 KiB writes, with
//                                K long x-h-* fields, a field the Connection
//                                field lists (x-hop), and Content-Length
//                                unless chunked
//   anything else                the request as seen: service, method, path,
//                                headers, body bytes and their SHA-256 (the
//                                body is hashed as it streams, never held)
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';

const [name, portText] = process.argv.slice(2);
let healthy = true;
let slowClosed = 0;

const server = createServer((request, response) => {
  const url = new URL(request.url, 'http://upstream');
  const reply = (status, body) => {
    response.writeHead(status, { 'content-type': 'application/json', 'x-upstream': name });
    response.end(JSON.stringify(body));
  };
  if (url.pathname === '/readyz') return reply(healthy ? 200 : 503, { ready: healthy });
  if (url.pathname === '/control/unhealthy') { healthy = false; return reply(200, {}); }
  if (url.pathname === '/control/healthy') { healthy = true; return reply(200, {}); }
  if (url.pathname === '/control/slow-closed') return reply(200, { closed: slowClosed });
  if (url.pathname === '/control/keepalive') {
    server.keepAliveTimeout = Number(url.searchParams.get('ms'));
    return reply(200, {});
  }
  if (url.pathname === '/control/connections') return reply(200, { accepted: connectionsAccepted });
  if (url.pathname === '/v1/models') {
    return reply(200, { object: 'list', data: [{ id: `${name}-model`, object: 'model', owned_by: name }] });
  }
  if (url.pathname.endsWith('/download')) {
    const size = Number(url.searchParams.get('bytes'));
    const headers = { 'content-type': 'application/octet-stream', 'x-upstream': name, 'x-hop': 'this hop only',
      connection: 'x-hop' };
    for (let i = 0; i < Number(url.searchParams.get('headers') ?? 0); i++) headers[`x-h-${i}`] = `${i}-${'v'.repeat(200)}`;
    if (url.searchParams.get('chunked') !== '1') headers['content-length'] = String(size);
    response.writeHead(200, headers);
    if (request.method === 'HEAD') return response.end();
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = 97 + (i % 26);
    for (let at = 0; at < size; at += 16384) response.write(body.subarray(at, Math.min(size, at + 16384)));
    return response.end();
  }
  if (url.pathname.endsWith('/slow')) { // holds the request open
    request.socket.once('close', () => { slowClosed += 1; });
    return;
  }

  const hash = createHash('sha256');
  let bytes = 0;
  const chunks = [];
  request.on('data', (piece) => {
    bytes += piece.length;
    hash.update(piece);
    if (bytes <= 4096) chunks.push(piece);
  });
  request.on('end', () => {
    const small = bytes <= 4096 ? Buffer.concat(chunks).toString() : '';
    let stream = false;
    try { stream = JSON.parse(small).stream === true; } catch {}
    if (url.pathname === '/v1/chat/completions' && stream) {
      response.writeHead(200, { 'content-type': 'text/event-stream', 'x-upstream': name });
      let sent = 0;
      const next = () => {
        if (response.destroyed) return;
        if (sent === 5) { response.end('data: [DONE]\n\n'); return; }
        response.write(`data: ${JSON.stringify({ index: sent, sent_at: Date.now() })}\n\n`);
        sent += 1;
        setTimeout(next, 200);
      };
      next();
      return;
    }
    reply(200, {
      service: name, method: request.method, path: request.url, headers: request.headers,
      bytes, sha256: hash.digest('hex'), body: small,
    });
  });
});
server.keepAliveTimeout = 60_000;
let connectionsAccepted = 0;
server.on('connection', () => { connectionsAccepted += 1; });
server.listen(Number(portText), '127.0.0.1', () => console.log(`listening ${server.address().port}`));
