// Starts Swagger UI on /docs (app/apidocs/routes.py). A file, not an inline script: the app's
// Content-Security-Policy allows scripts from this origin only.
"use strict";

(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Otherwise Swagger UI sends the document to validator.swagger.io for a badge.
    validatorUrl: null,
  });
})();
