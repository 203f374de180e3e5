// A real, certified OpenID provider (panva/oidc-provider) for the test suite, on 127.0.0.1.
//
// Usage: node provider.mjs <gate resource URI> [opaque]
// Listens on a free port, then prints one JSON line {"issuer": "..."} on stdout.
//
// What the tests own here: the clients, the accounts and their groups, resource indicators that
// make every access token for the gate a JWT whose aud is the gate's resource URI, and one hook,
// POST /test/device {"user_code", "sub"}, which completes the person's step of the device grant
// (RFC 8628) for that account as the provider's own pages would after a login and consent.
import http from 'node:http';

import Provider from 'oidc-provider';

const resource = process.argv[2];
const format = process.argv[3] === 'opaque' ? 'opaque' : 'jwt'; // opaque: the gate introspects them
if (!resource) {
  process.stderr.write('usage: node provider.mjs <resource URI>\n');
  process.exit(2);
}

const SCOPES = 'mcp:tools tools:high';
const ACCOUNTS = {
  '00u-alice': { email: 'alice@example.com', name: 'Alice Example', groups: ['okta:developers'] },
  '00u-dave': { email: 'dave@example.com', name: 'Dave Ops', groups: ['okta:sre-oncall'] },
  '00u-erin': { email: 'erin@example.com', name: 'Erin Guest', groups: [] },
};

const server = http.createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      // An agent acting as itself (client credentials).
      client_id: 'deploy-bot',
      client_secret: 'deploy-bot-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: SCOPES,
    },
    {
      // The gate itself, introspecting opaque tokens (RFC 7662).
      client_id: 'mcp-gate',
      client_secret: 'mcp-gate-introspection-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // A public client for people: the agent acting for a person, and `mcp-gate login`.
      client_id: 'mcp-gate-cli',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'none',
      scope: `openid email profile offline_access ${SCOPES}`,
    },
  ],
  async findAccount(ctx, sub) {
    const account = ACCOUNTS[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() { return { sub, email: account.email, email_verified: true, name: account.name }; },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'mcp:tools', 'tools:high'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: SCOPES,
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
  // The claims the gate maps: email and name of the person, and their groups.
  async extraTokenClaims(ctx, token) {
    const account = ACCOUNTS[token.accountId];
    if (!account) return undefined;
    return { email: account.email, name: account.name, groups: account.groups };
  },
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  ttl: { DeviceCode: 300, RefreshToken: 3600, Grant: 3600, Session: 3600, Interaction: 300 },
  pkce: { required: () => false },
});

async function completeDevice(body) {
  const { user_code: userCode, sub } = JSON.parse(body);
  const code = await provider.DeviceCode.findByUserCode(userCode.replace(/-/g, ''));
  if (!code || !ACCOUNTS[sub]) return 404;
  const requested = (code.params.scope || '').split(' ').filter(Boolean);
  const grant = new provider.Grant({ accountId: sub, clientId: code.clientId });
  grant.addOIDCScope(requested.filter((s) => !SCOPES.split(' ').includes(s)).join(' '));
  grant.addResourceScope(resource, SCOPES);
  Object.assign(code, {
    accountId: sub,
    authTime: Math.floor(Date.now() / 1000),
    grantId: await grant.save(),
    scope: requested.join(' '),
    resource,
  });
  await code.save();
  return 204;
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.method === 'POST' && req.url === '/test/device') {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      completeDevice(body).then((status) => {
        res.writeHead(status);
        res.end();
      }, (error) => {
        res.writeHead(500);
        res.end(String(error));
      });
    });
    return;
  }
  callback(req, res);
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.on('SIGTERM', () => { server.close(); process.exit(0); });
