// A real OpenID Connect provider (the npm package oidc-provider) on 127.0.0.1, for onceonly's
// tests only: never a deployment. Started by tests/oidc/provider.py with one argument, a JSON
// file the test writes:
//   { "port": 0, "clients": [...oidc-provider client metadata...],
//     "accounts": { "<login>": { "password": "...", "claims": { "citizen_id": "...", "roles": [...] } } },
//     "resource": { "indicator": "https://api...", "scope": "onceonly", "ttl_s": 600 } }
// It prints one line "listening <issuer>" when ready. Keys are RSA, made at start (never on disk).
// Test-only admin routes (the script exists only for tests):
//   POST /__test/rotate  a new signing key, published first (signs from now on) beside the old one
//   POST /__test/sign    {"claims": {...}, "header": {...}} signed with the current key: lets a test
//                        make a token the provider's key signs but whose claims are wrong
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes, randomUUID, createHash, timingSafeEqual, createSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;
const resource = config.resource;
const cookieKeys = [randomBytes(32).toString('base64url')];
const keys = []; // private JWKs, newest first

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function page(title, body) {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;
}

function claimsOf(id) {
  const account = accounts[id];
  return account ? { sub: id, ...account.claims } : undefined;
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: { keys },
    cookies: { keys: cookieKeys },
    findAccount: async (_ctx, id) => (accounts[id] ? { accountId: id, claims: async () => claimsOf(id) } : undefined),
    claims: { openid: ['sub'], profile: ['name'], onceonly: ['citizen_id', 'roles'] },
    conformIdTokenClaims: false,
    extraTokenClaims: async (_ctx, token) => {
      const claims = claimsOf(token.accountId);
      if (!claims) return undefined;
      const extra = {};
      for (const name of ['citizen_id', 'roles', 'name']) if (name in claims) extra[name] = claims[name];
      return extra;
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.body = page('Sign out', `${form}<p>Do you want to sign out?</p>
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        postLogoutSuccessSource: async (ctx) => { ctx.body = page('Signed out', '<p>You are signed out.</p>'); },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => resource.indicator,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== resource.indicator) throw new errors.InvalidTarget();
          return {
            scope: resource.scope,
            audience: resource.indicator,
            accessTokenFormat: 'jwt',
            accessTokenTTL: resource.ttl_s ?? 600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    pkce: { required: () => true },
    ttl: { AccessToken: 600, IdToken: 600, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: ${esc(v)}</p>`).join(''));
    },
  });
  provider.use(interactions(provider));
  return provider;
}

async function formBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
    if (chunks.reduce((n, c) => n + c.length, 0) > 64 * 1024) throw new Error('too large');
  }
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

function passwordMatches(account, given) {
  const a = createHash('sha256').update(account.password).digest();
  const b = createHash('sha256').update(given ?? '').digest();
  return timingSafeEqual(a, b);
}

// The provider's own login and consent pages (Koa middleware before the provider's routes).
function interactions(provider) {
  return async (ctx, next) => {
    const m = ctx.path.match(/^\/interaction\/([\w-]+)(\/login|\/confirm|\/abort)?$/);
    if (!m) return next();
    ctx.set('Cache-Control', 'no-store');
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params } = details;
    const finish = async (result, merge) => {
      ctx.status = 303;
      ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge }));
    };
    const loginForm = (error) => page('Sign in', `${error ? `<p role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>Login ID <input name="login" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>
<p>Client: ${esc(params.client_id)}</p>`);
    if (ctx.method === 'GET' && !m[2]) {
      ctx.type = 'html';
      if (prompt.name === 'login') {
        ctx.body = loginForm();
      } else {
        const scopes = [...(prompt.details.missingOIDCScope ?? []), ...Object.values(prompt.details.missingResourceScopes ?? {}).flat()];
        ctx.body = page('Authorize', `<p>${esc(params.client_id)} asks for: ${scopes.map(esc).join(', ')}</p>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Deny</button></form>`);
      }
      return undefined;
    }
    if (ctx.method !== 'POST') return next();
    if (m[2] === '/abort') return finish({ error: 'access_denied', error_description: 'denied' }, false);
    if (m[2] === '/login') {
      const body = await formBody(ctx.req);
      const login = body.get('login');
      const account = accounts[login];
      if (!account || !passwordMatches(account, body.get('password'))) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginForm('Unknown login ID or wrong password.');
        return undefined;
      }
      return finish({ login: { accountId: login } }, false);
    }
    // consent: grant what the client asked for (as oidc-provider's own development pages do)
    const { grantId, session } = details;
    const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scope.join(' '));
    return finish({ consent: { grantId: await grant.save() } }, true);
  };
}

function b64url(data) {
  return Buffer.from(typeof data === 'string' ? data : JSON.stringify(data)).toString('base64url');
}

// Test-only: sign arbitrary claims with the provider's current key.
function sign(claims, header) {
  const key = keys[0];
  const head = { alg: 'RS256', typ: 'at+jwt', kid: key.kid, ...header };
  const input = `${b64url(head)}.${b64url(claims)}`;
  const signer = createSign('RSA-SHA256');
  signer.update(input);
  return `${input}.${signer.sign({ key, format: 'jwk' }).toString('base64url')}`;
}

async function admin(req, res) {
  const json = (status, data) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(data)); };
  if (req.url === '/__test/rotate') {
    keys.unshift(newKey());
    handler = buildProvider(issuer).callback();
    return json(200, { kid: keys[0].kid, kids: keys.map((k) => k.kid) });
  }
  if (req.url === '/__test/sign') {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const { claims, header } = JSON.parse(Buffer.concat(chunks).toString() || '{}');
    return json(200, { token: sign(claims, header ?? {}) });
  }
  return json(404, { error: 'not found' });
}

keys.push(newKey());
let issuer;
let handler;
const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/__test/')) {
    admin(req, res).catch((err) => { res.writeHead(500); res.end(String(err)); });
    return;
  }
  handler(req, res);
});
server.listen(config.port ?? 0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  handler = buildProvider(issuer).callback();
  process.stdout.write(`listening ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => { server.closeAllConnections(); process.exit(0); });
