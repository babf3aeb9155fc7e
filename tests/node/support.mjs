// Helpers shared by the node end-to-end tests.
import { createServer } from 'node:net';

// A loopback TCP port nobody listens on right now.
export function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// Polls /readyz until every model is loaded.
export async function waitReady(baseUrl, attempts = 1000) {
  for (let i = 0; i < attempts; i++) {
    try {
      const response = await fetch(`${baseUrl}/readyz`);
      if (response.status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('mmserve did not become ready');
}
