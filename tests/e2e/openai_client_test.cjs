// Drives ttt-serve's HTTP front door with the official OpenAI Node client (npm `openai`), as an
// existing application would: models.list, completions.create without and with stream: true,
// with an x-session-id header, and two refusals. Prints what it saw as one JSON object for
// http_e2e_test.py to compare with gRPC.
// Usage: node openai_client_test.cjs NODE_MODULES BASE_URL API_KEY MODEL PROMPT SESSION_ID
const path = require("path");
const [modules, baseURL, apiKey, model, prompt, sessionId] = process.argv.slice(2);
const mod = require(path.join(modules, "openai"));
const OpenAI = mod.OpenAI || mod.default || mod;

async function statusOf(call) {
  try {
    await call();
    return 200;
  } catch (e) {
    return e.status;
  }
}

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
  const greedy = { model, prompt, max_tokens: 12, temperature: 0 };
  const out = {};
  out.models = (await client.models.list()).data.map((m) => m.id);
  out.completion = (await client.completions.create(greedy)).choices[0].text;
  const stream = await client.completions.create({ ...greedy, stream: true });
  out.streamed = "";
  out.stream_chunks = 0;
  for await (const chunk of stream) {
    out.stream_chunks += 1;
    for (const choice of chunk.choices) out.streamed += choice.text;
  }
  const withSession = await client.completions.create(greedy, {
    headers: { "x-session-id": sessionId },
  });
  out.with_session = withSession.choices[0].text;
  out.error_status = await statusOf(() =>
    client.completions.create(greedy, { headers: { "x-session-id": "no-such-session" } }));
  const stranger = new OpenAI({ baseURL, apiKey: "not-a-token", maxRetries: 0 });
  out.unauthenticated_status = await statusOf(() => stranger.completions.create(greedy));
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
