// Cross-site request forgery attempts against the API named by ?api=, each reported on the page.
const api = new URLSearchParams(location.search).get("api");
const out = document.getElementById("out");
const say = text => { out.textContent += text + "\n"; };
const body = JSON.stringify({qual_name: "jobs.example.DummyJob", follow: false});
(async () => {
  for (const type of ["text/plain", "application/x-www-form-urlencoded"]) {
    await fetch(api + "/job", {method: "POST", mode: "no-cors", credentials: "include",
                               headers: {"Content-Type": type}, body});
    say("sent " + type);
  }
  // A JSON fetch needs a preflight, which the server answers only for cors_origins.
  try {
    const reply = await fetch(api + "/job", {method: "POST", credentials: "include",
                                             headers: {"Content-Type": "application/json"}, body});
    say("json " + reply.status);
  } catch (e) {
    say("json blocked");
  }
  const form = document.getElementById("form");
  form.action = api + "/job";
  form.submit();
  say("form sent");
})().catch(e => say("exception " + e));
