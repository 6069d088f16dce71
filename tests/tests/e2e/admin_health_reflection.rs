//! Health (gRPC and admin HTTP), reflection v1 and v1alpha, graceful shutdown.

use futures::StreamExt;
use refund_gateway_tests::spawn_app;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "refundgateway.v1.RefundGatewayService";

#[tokio::test]
async fn health_check_and_watch() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    let mut health = HealthClient::new(app.channel.clone());
    let resp = health
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await?
        .into_inner();
    assert_eq!(resp.status(), ServingStatus::Serving);
    let resp = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(resp.status(), ServingStatus::Serving);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await?
        .into_inner();
    let first = watch
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
    assert_eq!(first.status(), ServingStatus::Serving);

    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/healthz", app.admin_url))
            .send()
            .await?
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/readyz", app.admin_url))
            .send()
            .await?
            .status(),
        200
    );
    let metrics = http
        .get(format!("{}/metrics", app.admin_url))
        .send()
        .await?;
    assert_eq!(metrics.status(), 200);
    // Histograms, which add up across replicas, not summaries.
    let text = metrics.text().await?;
    assert!(
        text.contains("rpc_duration_seconds_bucket"),
        "no RPC duration histogram in {text}"
    );
    assert!(!text.contains("quantile="), "a summary in {text}");
    assert!(
        text.contains("refund_gateway_build_info"),
        "no build info in {text}"
    );

    // Shutdown turns the service NOT_SERVING before the server stops; the watcher sees it.
    let waiter = tokio::spawn(async move {
        while let Some(Ok(update)) = watch.next().await {
            if update.status() == ServingStatus::NotServing {
                return true;
            }
        }
        false
    });
    app.shutdown().await?;
    assert!(waiter.await?, "watch never reported NOT_SERVING");
    Ok(())
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_the_service() -> anyhow::Result<()> {
    let app = spawn_app().await?;
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(app.channel.clone());
        let requests = futures::stream::iter([
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(SERVICE.into())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "grpc.health.v1.Health".into(),
                )),
            },
        ]);
        let mut answers = client.server_reflection_info(requests).await?.into_inner();
        let mut seen = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer?.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    seen.extend(list.service.into_iter().map(|s| s.name));
                }
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert!(!files.file_descriptor_proto.is_empty());
                    seen.push("file".into());
                }
                other => anyhow::bail!("unexpected reflection answer {other:?}"),
            }
        }
        assert!(seen.iter().any(|s| s == SERVICE), "{seen:?}");
        assert!(
            seen.iter().any(|s| s == "grpc.health.v1.Health"),
            "{seen:?}"
        );
        assert_eq!(seen.iter().filter(|s| *s == "file").count(), 2);
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(app.channel.clone());
        let requests = futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]);
        let mut answers = client.server_reflection_info(requests).await?.into_inner();
        let answer = answers
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no answer"))??;
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                assert!(list.service.iter().any(|s| s.name == SERVICE));
            }
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        }
    }
    app.shutdown().await
}
